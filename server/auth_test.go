package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/internal/testcert"
)

// writeTokens writes a token file into dir and returns its path.
func writeTokens(t testing.TB, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// bearer returns ctx carrying token as its caller's credentials.
func bearer(ctx context.Context, token string) context.Context {
	if token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

const testTokens = `{"tokens":[
	{"name":"sched","token":"tok-sched","namespaces":["orders"],"roles":["schedule"]},
	{"name":"sub","token":"tok-sub","namespaces":["orders"],"roles":["subscribe"]},
	{"name":"admin","sha256":"` + "%s" + `","namespaces":["orders"],"roles":["admin"]},
	{"name":"node","token":"tok-node","namespaces":["*"],"roles":["node"]},
	{"name":"seed","token":"tok-seed","namespaces":["*"],"roles":["schedule","admin"]}]}`

// TestAuthorizationMatrix calls every RPC with every role (and with no
// token and an unknown one), in the token's namespace and in a foreign
// one, on a real gRPC server, and checks the call's status: OK where the
// role and namespace allow it, PERMISSION_DENIED or UNAUTHENTICATED
// otherwise, and that no denial tells anything of the timers there.
func TestAuthorizationMatrix(t *testing.T) {
	dir := t.TempDir()
	path := writeTokens(t, dir, fmt.Sprintf(testTokens, auth.HashToken("tok-admin")))
	e := start(t, "", func(c *Config) { c.AuthFile = path })
	seed := bearer(e.ctx(), "tok-seed")
	for _, ns := range []string{"orders", "other"} {
		resp, err := e.timers.Schedule(seed, &pb.ScheduleRequest{Namespace: ns, Timers: []*pb.TimerSpec{spec("exists", "later", time.Hour), spec("due", "now", 0)}})
		if err != nil || resp.GetResults()[0].GetCode() != 0 {
			t.Fatalf("seed %s: %v %v", ns, resp, err)
		}
	}

	n := 0
	rpcs := []struct {
		name string
		role auth.Role // 0: any token
		// namespaced: the call names ns, so a foreign one is denied.
		namespaced bool
		call       func(ctx context.Context, ns string) error
	}{
		{"Schedule", auth.RoleSchedule, true, func(ctx context.Context, ns string) error {
			n++
			_, err := e.timers.Schedule(ctx, &pb.ScheduleRequest{Namespace: ns, Timers: []*pb.TimerSpec{spec(fmt.Sprint("s", n), "later", time.Hour)}})
			return err
		}},
		{"Schedule(item namespace)", auth.RoleSchedule, true, func(ctx context.Context, ns string) error {
			n++
			item := spec(fmt.Sprint("i", n), "later", time.Hour)
			item.Namespace = ns
			_, err := e.timers.Schedule(ctx, &pb.ScheduleRequest{Namespace: "orders", Timers: []*pb.TimerSpec{spec(fmt.Sprint("j", n), "later", time.Hour), item}})
			return err
		}},
		{"Reschedule", auth.RoleSchedule, true, func(ctx context.Context, ns string) error {
			_, err := e.timers.Reschedule(ctx, &pb.RescheduleRequest{Namespace: ns, Items: []*pb.RescheduleItem{{Id: "exists", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(2 * time.Hour)}}}})
			return err
		}},
		{"Cancel", auth.RoleSchedule, true, func(ctx context.Context, ns string) error {
			_, err := e.timers.Cancel(ctx, &pb.CancelRequest{Namespace: ns, Ids: []string{"never-scheduled"}})
			return err
		}},
		{"Get", auth.RoleSchedule, true, func(ctx context.Context, ns string) error {
			_, err := e.timers.Get(ctx, &pb.GetRequest{Namespace: ns, Id: "exists"})
			return err
		}},
		{"Subscribe", auth.RoleSubscribe | auth.RoleNode, true, func(ctx context.Context, ns string) error {
			// A timer due now for each call: an earlier caller may have
			// taken the last.
			n++
			if _, err := e.timers.Schedule(seed, &pb.ScheduleRequest{Namespace: ns, Timers: []*pb.TimerSpec{spec(fmt.Sprint("d", n), "now", 0)}}); err != nil {
				return fmt.Errorf("seed a due timer: %w", err)
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			st, err := e.timers.Subscribe(ctx)
			if err != nil {
				return err
			}
			// A Send on a stream the server already ended fails with
			// io.EOF; the status is Recv's.
			_ = st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: &pb.Subscription{Namespace: ns, Topic: "now"}}})
			m, err := st.Recv() // the "due" timer, or the denial
			if err != nil {
				return err
			}
			return st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: []string{m.GetDelivery().GetDeliveryId()}}}})
		}},
		{"ListDeadLetters", auth.RoleAdmin, true, func(ctx context.Context, ns string) error {
			_, err := e.timers.ListDeadLetters(ctx, &pb.ListDeadLettersRequest{Namespace: ns})
			return err
		}},
		{"ReplayDeadLetters", auth.RoleAdmin, true, func(ctx context.Context, ns string) error {
			_, err := e.timers.ReplayDeadLetters(ctx, &pb.ReplayDeadLettersRequest{Namespace: ns, Ids: []string{"exists"}})
			return err
		}},
		{"ClusterService.Members", 0, false, func(ctx context.Context, _ string) error {
			_, err := e.cluster.Members(ctx, &pb.MembersRequest{})
			return err
		}},
		{"ClusterService.ShardMap", 0, false, func(ctx context.Context, _ string) error {
			_, err := e.cluster.ShardMap(ctx, &pb.ShardMapRequest{})
			return err
		}},
	}
	callers := []struct {
		name, token string
		role        auth.Role // 0: not authenticated
	}{
		{"no token", "", 0},
		{"unknown token", "tok-nobody", 0},
		{"schedule", "tok-sched", auth.RoleSchedule},
		{"subscribe", "tok-sub", auth.RoleSubscribe},
		{"admin", "tok-admin", auth.RoleAdmin},
		{"node", "tok-node", auth.RoleNode},
	}
	cases := 0
	for _, r := range rpcs {
		for _, c := range callers {
			for _, ns := range []string{"orders", "other"} {
				want := codes.OK
				switch {
				case c.role == 0:
					want = codes.Unauthenticated
				case r.role != 0 && c.role&r.role == 0:
					want = codes.PermissionDenied
				case r.namespaced && ns == "other" && c.name != "node":
					want = codes.PermissionDenied
				}
				ctx, cancel := context.WithTimeout(bearer(context.Background(), c.token), 20*time.Second)
				err := r.call(ctx, ns)
				cancel()
				cases++
				if got := status.Code(err); got != want {
					t.Errorf("%s as %s in %s: %v, want %v", r.name, c.name, ns, err, want)
				}
				if err != nil && strings.Contains(status.Convert(err).Message(), "exists") {
					t.Errorf("%s as %s in %s: the denial names the timer: %v", r.name, c.name, ns, err)
				}
			}
		}
	}
	t.Logf("authorization matrix: %d RPCs x %d callers x 2 namespaces = %d cases", len(rpcs), len(callers), cases)

	// A Get of a foreign id reads the same whether or not it exists.
	ctx := bearer(e.ctx(), "tok-sched")
	_, errExists := e.timers.Get(ctx, &pb.GetRequest{Namespace: "other", Id: "exists"})
	_, errMissing := e.timers.Get(ctx, &pb.GetRequest{Namespace: "other", Id: "missing"})
	if status.Code(errExists) != codes.PermissionDenied || status.Convert(errExists).Message() != status.Convert(errMissing).Message() {
		t.Errorf("Get of a foreign id: %v for one that exists, %v for one that does not; want the same denial", errExists, errMissing)
	}
	// Health needs no token.
	if err := e.conn.Invoke(e.ctx(), "/grpc.health.v1.Health/Check", &healthReq, &healthResp); err != nil {
		t.Errorf("health check without a token: %v", err)
	}
	// A stream marked forwarded is a peer's relay, which may give
	// deliveries back unsent: only a node may open one.
	for _, tc := range []struct {
		token string
		want  codes.Code
	}{{"tok-sub", codes.PermissionDenied}, {"tok-node", codes.OK}} {
		n++
		if _, err := e.timers.Schedule(seed, &pb.ScheduleRequest{Namespace: "orders", Timers: []*pb.TimerSpec{spec(fmt.Sprint("f", n), "now", 0)}}); err != nil {
			t.Fatalf("seed a due timer: %v", err)
		}
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(bearer(context.Background(), tc.token), "timerd-forwarded", "1"), 20*time.Second)
		st, err := e.timers.Subscribe(ctx)
		if err == nil {
			_ = st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: &pb.Subscription{Namespace: "orders", Topic: "now", Local: true}}})
			_, err = st.Recv()
		}
		cancel()
		if got := status.Code(err); got != tc.want {
			t.Errorf("a forwarded Subscribe with %s: %v, want %v", tc.token, err, tc.want)
		}
	}
}

// TestAuthFileReload: a token added to the file works once the file is
// rewritten, and a removed one stops working; a broken file keeps the
// previous tokens.
func TestAuthFileReload(t *testing.T) {
	dir := t.TempDir()
	one := `{"tokens":[{"name":"a","token":"tok-a","namespaces":["*"],"roles":["schedule"]}]}`
	path := writeTokens(t, dir, one)
	e := start(t, "", func(c *Config) { c.AuthFile = path })
	get := func(token string) codes.Code {
		_, err := e.timers.Get(bearer(e.ctx(), token), &pb.GetRequest{Id: "x"})
		return status.Code(err)
	}
	if got := get("tok-a"); got != codes.NotFound {
		t.Fatalf("tok-a before reload: %v", got)
	}
	writeTokens(t, dir, `{"tokens":[{"name":"b","token":"tok-b","namespaces":["*"],"roles":["schedule"]}]}`)
	if err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if a, b := get("tok-a"), get("tok-b"); a != codes.Unauthenticated || b != codes.NotFound {
		t.Fatalf("after reload: tok-a %v, tok-b %v; want UNAUTHENTICATED, NOT_FOUND", a, b)
	}
	writeTokens(t, dir, `{"tokens":[`)
	if err := e.srv.Reload(); err == nil {
		t.Fatal("Reload of a broken file succeeded")
	}
	if b := get("tok-b"); b != codes.NotFound {
		t.Fatalf("a broken file dropped the previous tokens: tok-b %v", b)
	}
}

// TestTLSReloadAndMTLS: with mTLS a client without a certificate is
// refused, one with a certificate from the CA is served, and a
// certificate replaced on disk is what the next connection sees, without
// a restart.
func TestTLSReloadAndMTLS(t *testing.T) {
	ca := testcert.NewCA(t, "test CA")
	certDir := t.TempDir()
	first := ca.Issue(t, certDir, "node")
	client := ca.Issue(t, "", "client")
	e := start(t, "", func(c *Config) {
		c.TLS = &TLSConfig{CertFile: first.CertFile, KeyFile: first.KeyFile, ClientCAFile: ca.CertFile}
	})
	// dialTLS makes a call over a new connection and returns the serial
	// of the server's certificate it saw.
	dialTLS := func(certs []tls.Certificate) (string, error) {
		var seen string
		cfg := &tls.Config{RootCAs: ca.Pool(), Certificates: certs, ServerName: "localhost",
			VerifyConnection: func(cs tls.ConnectionState) error {
				seen = cs.PeerCertificates[0].SerialNumber.String()
				return nil
			}}
		conn, err := grpc.NewClient(e.srv.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			return "", err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err = pb.NewTimerServiceClient(conn).Get(ctx, &pb.GetRequest{Id: "x"})
		if status.Code(err) == codes.NotFound {
			err = nil
		}
		return seen, err
	}
	if _, err := dialTLS(nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("a client without a certificate: %v, want refused (UNAVAILABLE)", err)
	}
	serial, err := dialTLS([]tls.Certificate{client.TLS(t)})
	if err != nil || serial != first.Serial.String() {
		t.Fatalf("with a client certificate: serial %s, %v; want %s", serial, err, first.Serial)
	}
	second := ca.Issue(t, certDir, "node") // same files, new certificate
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if got, err = dialTLS([]tls.Certificate{client.TLS(t)}); err == nil && got == second.Serial.String() {
			break
		}
	}
	if got != second.Serial.String() {
		t.Fatalf("after the files were replaced a new connection saw serial %s, want %s", got, second.Serial)
	}
	// A plaintext client is refused.
	if _, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "x"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a plaintext client: %v, want UNAVAILABLE", err)
	}
}

var (
	healthReq  healthpb.HealthCheckRequest
	healthResp healthpb.HealthCheckResponse
)

// TestOpenNodeWarns: a node without a token file warns at start when its
// gRPC address is reachable beyond loopback, and not on loopback or with
// tokens.
func TestOpenNodeWarns(t *testing.T) {
	tokens := writeTokens(t, t.TempDir(), `{"tokens":[]}`)
	for _, tt := range []struct {
		name, addr, auth string
		warns            bool
	}{
		{"open on all addresses", "0.0.0.0:0", "", true},
		{"open on loopback", "127.0.0.1:0", "", false},
		{"tokens on all addresses", "0.0.0.0:0", tokens, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			logs := &logRecorder{}
			start(t, "", func(c *Config) { c.GRPCAddr, c.AuthFile, c.Logger = tt.addr, tt.auth, slog.New(logs) })
			if got := len(logs.find("gRPC is open to anyone")) > 0; got != tt.warns {
				t.Fatalf("warned %v, want %v", got, tt.warns)
			}
		})
	}
}

package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/internal/servertest"
	"github.com/timerd/timerd/internal/testcert"
	"github.com/timerd/timerd/server"
)

// TestSecureClusterForwards runs three nodes that require mutual TLS and
// tokens, of one another too: a caller that reaches one node schedules
// and reads timers of every shard, so the forwarding node called its
// peers over mTLS and passed the caller's token on; the peers check it
// again, so a request sent straight to a peer, marked forwarded but with
// no token, is refused. A plain subscriber on that one node receives the
// timers of every shard: the node's relays to its peers present the
// node's own token.
func TestSecureClusterForwards(t *testing.T) {
	ca := testcert.NewCA(t, "cluster CA")
	dir := t.TempDir()
	nodeCert := ca.Issue(t, dir, "node")
	clientCert := ca.Issue(t, "", "client")
	tokens := servertest.TokenFile(t, `{"tokens":[
		{"name":"app","token":"tok-app","namespaces":["orders"],"roles":["schedule"]},
		{"name":"ops","token":"tok-ops","namespaces":["*"],"roles":["admin","subscribe"]},
		{"name":"node","token":"tok-node","namespaces":["*"],"roles":["node"]}]}`)
	creds := credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{clientCert.TLS(t)}, MinVersion: tls.VersionTLS13})
	c := clustertest.StartDial(t, 3, []grpc.DialOption{grpc.WithTransportCredentials(creds), grpc.WithPerRPCCredentials(testToken("tok-ops"))},
		func(c *server.Config) {
			c.TLS = &server.TLSConfig{CertFile: nodeCert.CertFile, KeyFile: nodeCert.KeyFile, ClientCAFile: ca.CertFile}
			c.AuthFile = tokens
			c.NodeToken = "tok-node"
		})
	col := c.CollectVia("orders", "soon", c.Node(0).GRPCAddr())
	conn, err := grpc.NewClient(c.Node(0).GRPCAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := pb.NewTimerServiceClient(conn)
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer tok-app"), 30*time.Second)
	defer cancel()

	var specs []*pb.TimerSpec
	for i := range 100 {
		specs = append(specs, &pb.TimerSpec{Id: fmt.Sprint("t", i), Topic: "x", When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(time.Now().Add(time.Hour))}})
	}
	resp, err := tc.Schedule(ctx, &pb.ScheduleRequest{Namespace: "orders", Timers: specs})
	if err != nil {
		t.Fatal(err)
	}
	owners := map[uint32]bool{}
	for i, r := range resp.GetResults() {
		if r.GetCode() != 0 {
			t.Fatalf("item %d through node 0: %v", i, r)
		}
		g, err := tc.Get(ctx, &pb.GetRequest{Namespace: "orders", Id: specs[i].GetId()})
		if err != nil {
			t.Fatalf("Get %s through node 0: %v", specs[i].GetId(), err)
		}
		owners[g.GetTimer().GetShard()] = true
	}
	peers := 0
	sm, err := pb.NewClusterServiceClient(conn).ShardMap(ctx, &pb.ShardMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range sm.GetShards() {
		if owners[o.GetShard()] && o.GetOwner() != "node-0" {
			peers++
		}
	}
	if peers == 0 {
		t.Fatal("no timer landed on a peer: nothing was forwarded")
	}
	t.Logf("100 timers on %d shards, %d of them on peers, scheduled and read through node 0 over mTLS with a token", len(owners), peers)

	// Timers due in a second, on every shard, reach the subscriber on
	// node 0 whichever node owns them.
	soon := time.Now().Add(time.Second)
	due := make(map[string]time.Time)
	specs = specs[:0]
	for i := range 200 {
		id := fmt.Sprint("soon", i)
		specs = append(specs, &pb.TimerSpec{Id: id, Topic: "soon", When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(soon)}})
		due[id] = soon
	}
	if resp, err = tc.Schedule(ctx, &pb.ScheduleRequest{Namespace: "orders", Timers: specs}); err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.GetResults() {
		if r.GetCode() != 0 {
			t.Fatalf("item %d through node 0: %v", i, r)
		}
	}
	col.Wait(due, 60*time.Second)
	if v := col.Check(due); !v.OK() {
		t.Fatalf("one-address subscriber over mTLS with tokens: %v", v)
	} else {
		t.Logf("200 timers due on every shard reached the subscriber on node 0: %v", v)
	}

	// A peer checks the token itself: marked forwarded, without one, a
	// request is refused.
	pc, err := grpc.NewClient(c.Node(1).GRPCAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	fwd := metadata.AppendToOutgoingContext(context.Background(), "timerd-forwarded", "1")
	if _, err := pb.NewTimerServiceClient(pc).Get(fwd, &pb.GetRequest{Namespace: "orders", Id: "t0"}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a forwarded-looking request without a token: %v, want UNAUTHENTICATED", err)
	}
}

// testToken is a bearer token as per-RPC credentials.
type testToken string

func (t testToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (testToken) RequireTransportSecurity() bool { return true }

package e2e

import (
	"context"
	"crypto/tls"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/logline"
	"github.com/timerd/timerd/internal/testcert"
)

// reloadTimeout bounds the wait for a signalled timerd to take its new
// files.
const reloadTimeout = 30 * time.Second

// TestSIGHUPReload sends SIGHUP to a timerd process that serves TLS and
// requires tokens. Each file is replaced so that its watcher cannot see
// it (same size, the old modification time), so that only the signal can
// explain the change: a token file that swaps token one for token two,
// then a certificate of another serial and subject from the same CA. A
// second's wait before each signal shows the watcher did not take them.
// Last, broken files and SIGHUP: the node logs the error, naming both
// files, and keeps serving with what it had.
func TestSIGHUPReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := testcert.NewCA(t, "reload CA")
	first := ca.Issue(t, dir, "node")
	// Room for any certificate and key of the CA: a replacement is padded
	// to this size, so that the size does not give it away.
	const pemSize = 4096
	pad(t, first.CertFile, pemSize)
	pad(t, first.KeyFile, pemSize)
	tokenFile := filepath.Join(dir, "tokens.json")
	tokens := func(tok string) []byte {
		return []byte(`{"tokens":[{"name":"app","token":"` + tok + `","namespaces":["*"],"roles":["schedule"]}]}`)
	}
	if err := os.WriteFile(tokenFile, tokens("token-one"), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, t.TempDir(), "--tls-cert", first.CertFile, "--tls-key", first.KeyFile, "--auth-file", tokenFile)

	conn, err := grpc.NewClient(n.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := pb.NewTimerServiceClient(conn)
	// get reads timer a with token tok and returns the call's code.
	get := func(tok string) codes.Code {
		ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok), 10*time.Second)
		defer cancel()
		_, err := tc.Get(ctx, &pb.GetRequest{Id: "a"})
		return status.Code(err)
	}
	// serial makes a new TLS connection and returns the serial of the
	// certificate the node served on it.
	serial := func() *big.Int {
		t.Helper()
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 10 * time.Second}, Config: &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}}
		c, err := d.DialContext(context.Background(), "tcp", n.grpcAddr)
		if err != nil {
			t.Fatalf("TLS connection to timerd: %v", err)
		}
		defer c.Close()
		return c.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber
	}
	// tokenOne and tokenTwo report which of the tokens the node takes.
	tokenTwo := func() bool { return get("token-one") == codes.Unauthenticated && get("token-two") == codes.OK }
	tokenOne := func() bool { return get("token-one") == codes.OK && get("token-two") == codes.Unauthenticated }

	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer token-one"), 10*time.Second)
	defer cancel()
	if _, err := tc.Schedule(ctx, &pb.ScheduleRequest{Timers: []*pb.TimerSpec{{Id: "a", Topic: "t", When: &pb.TimerSpec_Delay{Delay: durationpb.New(time.Hour)}}}}); err != nil {
		t.Fatalf("Schedule with token one: %v", err)
	}
	if !tokenOne() || serial().Cmp(first.Serial) != 0 {
		t.Fatalf("at start: token one %v, token two %v, serial %v (want OK, UNAUTHENTICATED, %v)", get("token-one"), get("token-two"), serial(), first.Serial)
	}

	// The token file.
	replaceUnseen(t, tokenFile, tokens("token-two"))
	time.Sleep(lookInterval + 200*time.Millisecond)
	if !tokenOne() {
		t.Fatalf("the token file's watcher saw a change it cannot see: token one %v, token two %v", get("token-one"), get("token-two"))
	}
	hup(t, n, "SIGHUP: TLS, token and namespace limits files reloaded")
	waitFor(t, reloadTimeout, "token two to work and token one to be refused after SIGHUP", tokenTwo)

	// The certificate.
	second := ca.Issue(t, t.TempDir(), "node-two")
	for _, f := range [][2]string{{first.KeyFile, second.KeyFile}, {first.CertFile, second.CertFile}} {
		b, err := os.ReadFile(f[1])
		if err != nil {
			t.Fatal(err)
		}
		replaceUnseen(t, f[0], b)
	}
	time.Sleep(lookInterval + 200*time.Millisecond)
	if s := serial(); s.Cmp(first.Serial) != 0 {
		t.Fatalf("the certificate's watcher saw a change it cannot see: serial %v, want %v", s, first.Serial)
	}
	hup(t, n, "SIGHUP: TLS, token and namespace limits files reloaded")
	waitFor(t, reloadTimeout, "the new certificate after SIGHUP", func() bool { return serial().Cmp(second.Serial) == 0 })
	t.Logf("SIGHUP: token two replaced token one; serial %v replaced %v", second.Serial, first.Serial)

	// Broken files: the node says so and keeps what it had.
	for _, f := range []string{tokenFile, first.CertFile} {
		if err := os.WriteFile(f, []byte("not what it should be"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	line := hup(t, n, "SIGHUP: reload; what failed keeps its previous version")
	if line["level"] != "ERROR" || !strings.Contains(line["err"], tokenFile) || !strings.Contains(line["err"], first.CertFile) {
		t.Errorf("SIGHUP with broken files logged level=%s err=%q; want ERROR naming %s and %s", line["level"], line["err"], tokenFile, first.CertFile)
	}
	if !tokenTwo() || serial().Cmp(second.Serial) != 0 {
		t.Fatalf("after broken files: token one %v, token two %v, serial %v; want the previous token file and serial %v", get("token-one"), get("token-two"), serial(), second.Serial)
	}
	select {
	case <-n.exited:
		t.Fatalf("timerd exited after the SIGHUPs (%v)", n.state)
	default:
	}
	n.stop(syscall.SIGTERM)
}

// lookInterval is how often, at most, timerd looks at its TLS and
// token files' modification times and sizes (server.TLSReloadInterval and
// server.AuthReloadInterval).
const lookInterval = time.Second

// hup sends SIGHUP to n and returns the fields of the first line with
// message msg that it logs afterwards; it fails the test if none comes
// within reloadTimeout.
func hup(t *testing.T, n *node, msg string) map[string]string {
	t.Helper()
	from := len(n.logs.String())
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
	return n.waitLogged(from, msg)
}

// waitLogged returns the fields of the first line with message msg that
// n logs after the first from bytes of its log; it fails the test if
// none comes within reloadTimeout.
func (n *node) waitLogged(from int, msg string) map[string]string {
	n.t.Helper()
	var found map[string]string
	waitFor(n.t, reloadTimeout, "timerd to log msg="+msg, func() bool {
		for l := range strings.SplitSeq(n.logs.String()[from:], "\n") {
			if f := logline.Parse(l); f["msg"] == msg {
				found = f
				return true
			}
		}
		return false
	})
	return found
}

// pad appends newlines to the file at path up to size bytes: PEM and JSON
// readers skip them.
func pad(t *testing.T, path string, size int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > size {
		t.Fatalf("%s has %d bytes, more than %d", path, len(b), size)
	}
	if err := os.WriteFile(path, append(b, []byte(strings.Repeat("\n", size-len(b)))...), 0o600); err != nil {
		t.Fatal(err)
	}
}

// replaceUnseen replaces the file at path with b, padded with newlines to
// the old file's size and given its modification time, so that a watcher
// of modification times and sizes cannot tell. The new file is renamed
// into place whole.
func replaceUnseen(t *testing.T, path string, b []byte) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	pad(t, tmp, int(fi.Size()))
	if err := os.Chtimes(tmp, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if now, err := os.Stat(path); err != nil || now.Size() != fi.Size() || !now.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("%s replaced: %v, %v; want size %d and time %v", path, now, err, fi.Size(), fi.ModTime())
	}
}

// TestSIGHUPWhileStarting sends SIGHUP as soon as timerd logs its first
// line, while it is still starting (an operator's rotation may reach a
// node that is restarting): the node must start as if it had not come,
// not die of it (SIGHUP's default action), serve, and reload once
// started.
func TestSIGHUPWhileStarting(t *testing.T) {
	t.Parallel()
	var sigErr error
	n := startNodeWatch(t, t.TempDir(), func(p *os.Process) { sigErr = p.Signal(syscall.SIGHUP) })
	if sigErr != nil {
		t.Fatalf("SIGHUP: %v", sigErr)
	}
	n.waitLogged(0, "SIGHUP: TLS, token and namespace limits files reloaded")
	mustTimerctl(t, n.grpcAddr, "schedule", "a", "--topic", "t", "--in", "1h")
	n.stop(syscall.SIGTERM)
}

package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/internal/testcert"
	"github.com/timerd/timerd/ring"
	"github.com/timerd/timerd/server"
)

// TestPeerCARotation rotates a three-node mutual-TLS cluster from one CA
// to another without a restart, as docs/SECURITY.md tells an operator
// to: every CA file first trusts both CAs, then every node gets a
// certificate of the new CA, then the peer CA files drop the old CA.
// Requests forwarded through node 0 reach the owners of every shard, and
// the timers reach a subscriber on node 0 over the relays, at each step:
// on the connections opened before a step and on new ones (the test cuts
// every node's peer connections after each step, so the next calls
// handshake again). Last, node 2 falls back to a certificate of the old
// CA, which node 0's peer CA file no longer holds: node 0 refuses node 2
// on its next connection, and still reaches node 1.
func TestPeerCARotation(t *testing.T) {
	oldCA, newCA := testcert.NewCA(t, "old CA"), testcert.NewCA(t, "new CA")
	dir := t.TempDir()
	clientCAs := filepath.Join(dir, "client-cas.pem")
	peerCAs := func(node string) string { return filepath.Join(dir, node+"-peer-cas.pem") }
	const nodes = 3
	names := make([]string, nodes)
	testcert.Bundle(t, clientCAs, oldCA)
	for i := range names {
		names[i] = fmt.Sprint("node-", i)
		oldCA.Issue(t, dir, names[i])
		testcert.Bundle(t, peerCAs(names[i]), oldCA)
	}

	// The test's client trusts both CAs and presents a certificate of the
	// old one, which every node's client CA file keeps.
	rootsFile := filepath.Join(t.TempDir(), "roots.pem")
	testcert.Bundle(t, rootsFile, oldCA, newCA)
	rootsPEM, err := os.ReadFile(rootsFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootsPEM)
	creds := credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{oldCA.Issue(t, "", "client").TLS(t)}, MinVersion: tls.VersionTLS13})

	const shards = 32
	c := clustertest.StartDial(t, nodes, []grpc.DialOption{grpc.WithTransportCredentials(creds)}, func(c *server.Config) {
		c.Shards = shards
		c.TLS = &server.TLSConfig{
			CertFile:     filepath.Join(dir, c.NodeName+".pem"),
			KeyFile:      filepath.Join(dir, c.NodeName+"-key.pem"),
			ClientCAFile: clientCAs,
			PeerCAFile:   peerCAs(c.NodeName),
		}
	})
	col := c.CollectVia("rot", "t", c.Node(0).GRPCAddr())
	conn, err := grpc.NewClient(c.Node(0).GRPCAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := pb.NewTimerServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// reload is what SIGHUP does on every node.
	reload := func(step string) {
		t.Helper()
		for i := range nodes {
			if err := c.Node(i).Reload(); err != nil {
				t.Fatalf("%s: reload node %d: %v", step, i, err)
			}
		}
	}
	cut := func() {
		for i := range nodes {
			c.Node(i).CutPeers()
		}
	}
	// The owners stay those of the start: no node joins or leaves.
	sm, err := pb.NewClusterServiceClient(conn).ShardMap(ctx, &pb.ShardMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	owner := make(map[uint32]string)
	for _, o := range sm.GetShards() {
		owner[o.GetShard()] = o.GetOwner()
	}
	due := make(map[string]time.Time)
	// schedule schedules 64 timers due in a second through node 0 and
	// returns the results by owner of the timer's shard; the timers
	// scheduled are added to due.
	schedule := func(step string) map[string][]*pb.ItemResult {
		t.Helper()
		when := time.Now().Add(time.Second)
		var specs []*pb.TimerSpec
		for i := range 64 {
			specs = append(specs, &pb.TimerSpec{Id: fmt.Sprintf("%s-%d", step, i), Topic: "t", When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(when)}})
		}
		resp, err := tc.Schedule(ctx, &pb.ScheduleRequest{Namespace: "rot", Timers: specs})
		if err != nil {
			t.Fatalf("%s: Schedule through node 0: %v", step, err)
		}
		byOwner := make(map[string][]*pb.ItemResult)
		for _, r := range resp.GetResults() {
			o := owner[ring.Shard("rot", r.GetId(), shards)]
			byOwner[o] = append(byOwner[o], r)
			if r.GetCode() == int32(codes.OK) {
				due[r.GetId()] = when
			}
		}
		return byOwner
	}
	// works checks that a step's timers all went through and reached the
	// subscriber on node 0, peers' shards among them.
	works := func(step string) {
		t.Helper()
		byOwner := schedule(step)
		for o, rs := range byOwner {
			for _, r := range rs {
				if r.GetCode() != int32(codes.OK) {
					t.Fatalf("%s: item %s of %s through node 0: code %d %s", step, r.GetId(), o, r.GetCode(), r.GetMessage())
				}
			}
		}
		if len(byOwner[names[1]]) == 0 || len(byOwner[names[2]]) == 0 {
			t.Fatalf("%s: no timer on a shard of node 1 or 2 (%d, %d): nothing was forwarded", step, len(byOwner[names[1]]), len(byOwner[names[2]]))
		}
		col.Wait(due, time.Minute)
		if v := col.Check(due); !v.OK() {
			t.Fatalf("%s: subscriber on node 0: %v", step, v)
		}
		t.Logf("%s: 64 timers through node 0 (%d on node 1, %d on node 2) scheduled and delivered", step, len(byOwner[names[1]]), len(byOwner[names[2]]))
	}

	works("old CA")

	// 1. Every CA file trusts both CAs.
	testcert.Bundle(t, clientCAs, oldCA, newCA)
	for _, n := range names {
		testcert.Bundle(t, peerCAs(n), oldCA, newCA)
	}
	reload("both CAs")
	works("both CAs")

	// 2. Every node gets a certificate of the new CA. The connections
	// already open keep working; new ones verify the new certificates
	// against the peer CA files as they now are.
	for _, n := range names {
		newCA.Issue(t, dir, n)
	}
	reload("new certificates")
	works("new certificates, connections open before")
	cut()
	works("new certificates, new connections")

	// 3. The peer CA files drop the old CA.
	for _, n := range names {
		testcert.Bundle(t, peerCAs(n), newCA)
	}
	reload("new CA only")
	cut()
	works("new CA only")

	// 4. Node 2 presents the old CA's certificate again: node 0 no
	// longer trusts it, and refuses it on a new connection.
	oldCA.Issue(t, dir, names[2])
	if err := c.Node(2).Reload(); err != nil {
		t.Fatal(err)
	}
	c.Node(0).CutPeers()
	byOwner := schedule("stale peer")
	for _, r := range byOwner[names[1]] {
		if r.GetCode() != int32(codes.OK) {
			t.Errorf("stale peer: item %s of node 1: code %d %s, want OK", r.GetId(), r.GetCode(), r.GetMessage())
		}
	}
	if len(byOwner[names[2]]) == 0 {
		t.Fatal("stale peer: no timer on a shard of node 2")
	}
	for _, r := range byOwner[names[2]] {
		if r.GetCode() != int32(codes.Unavailable) || !strings.Contains(r.GetMessage(), "certificate") {
			t.Fatalf("stale peer: item %s of node 2: code %d %q, want UNAVAILABLE for its certificate", r.GetId(), r.GetCode(), r.GetMessage())
		}
	}
	t.Logf("stale peer: node 0 refused node 2: %s", byOwner[names[2]][0].GetMessage())
	col.Wait(due, time.Minute)
	if v := col.Check(due); !v.OK() {
		t.Fatalf("stale peer: subscriber on node 0: %v", v)
	}
}

package client_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/internal/servertest"
	"github.com/timerd/timerd/internal/testcert"
	"github.com/timerd/timerd/server"
)

// TestTLSAndToken: a client with the CA, a client certificate and a
// token schedules on a node that requires mutual TLS and tokens; the same
// token may not touch another namespace, and a token is never sent over
// plaintext unless asked to.
func TestTLSAndToken(t *testing.T) {
	ca := testcert.NewCA(t, "test CA")
	node := ca.Issue(t, "", "node")
	cl := ca.Issue(t, "", "client")
	tokens := servertest.TokenFile(t, `{"tokens":[{"name":"app","token":"tok-app","namespaces":["orders"],"roles":["schedule"]}]}`)
	cfg := localConfig(t.TempDir())
	cfg.TLS = &server.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, ClientCAFile: ca.CertFile}
	cfg.AuthFile = tokens
	srv := servertest.Start(t, cfg)

	tc, err := client.TLSConfig(ca.CertFile, cl.CertFile, cl.KeyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, srv.GRPCAddr(), client.WithTLS(tc), client.WithToken("tok-app"), client.WithNamespace("orders"))
	if _, err := c.Schedule(testCtx(t), client.Timer{ID: "a", Topic: "t", Delay: time.Hour}); err != nil {
		t.Fatalf("Schedule with TLS and a token: %v", err)
	}
	if _, err := c.Get(testCtx(t), "elsewhere", "a"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Get in a foreign namespace: %v, want PERMISSION_DENIED", err)
	}

	plain := servertest.Start(t, localConfig(t.TempDir()))
	if p, err := client.New(testCtx(t), plain.GRPCAddr(), client.WithToken("tok-app")); err == nil {
		_ = p.Close()
		t.Fatal("WithToken made a plaintext connection")
	} else {
		t.Logf("WithToken over plaintext: %v", err)
	}
	q := newClient(t, plain.GRPCAddr(), client.WithInsecureToken("tok-app"))
	if _, err := q.Get(testCtx(t), "orders", "a"); status.Code(err) != codes.NotFound {
		t.Fatalf("WithInsecureToken to an open node: %v, want NOT_FOUND", err)
	}
}

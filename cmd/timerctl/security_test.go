package main

import (
	"testing"

	"github.com/timerd/timerd/internal/servertest"
	"github.com/timerd/timerd/internal/testcert"
	"github.com/timerd/timerd/server"
)

// TestTLSAndTokenFlags runs timerctl against a node that requires mutual
// TLS and tokens: with the CA, a client certificate and --token (or
// TIMERD_TOKEN) it schedules; without the token or the certificate it is
// refused.
func TestTLSAndTokenFlags(t *testing.T) {
	ca := testcert.NewCA(t, "test CA")
	node := ca.Issue(t, "", "node")
	cl := ca.Issue(t, "", "client")
	tokens := servertest.TokenFile(t, `{"tokens":[{"name":"ops","token":"tok-ops","namespaces":["*"],"roles":["schedule"]}]}`)
	srv := startServer(t, func(c *server.Config) {
		c.TLS = &server.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, ClientCAFile: ca.CertFile}
		c.AuthFile = tokens
	})
	addr := srv.GRPCAddr()
	tlsArgs := []string{"--tls-ca", ca.CertFile, "--tls-cert", cl.CertFile, "--tls-key", cl.KeyFile}
	mustCtl(t, addr, append(tlsArgs, "--token", "tok-ops", "schedule", "a", "--topic", "t", "--in", "1h")...)
	t.Setenv("TIMERD_TOKEN", "tok-ops")
	mustCtl(t, addr, append(tlsArgs, "get", "a")...)
	t.Setenv("TIMERD_TOKEN", "")
	wantFail(t, ctl(t, addr, append(tlsArgs, "get", "a")...), "Unauthenticated")
	wantFail(t, ctl(t, addr, "--tls-ca", ca.CertFile, "--token", "tok-ops", "get", "a"))
	// A token never goes to a non-loopback address in plaintext.
	if r := ctl(t, "192.0.2.1:7070", "--token", "x", "get", "a"); r.code != exitUsage {
		t.Errorf("--token over plaintext to a remote address: %v", r)
	}
}

package server

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/testcert"
)

// BenchmarkServerSecureGet measures what transport security and the token
// check cost a small call: Gets of a missing timer (NOT_FOUND, no store
// write) from 16 concurrent callers on one connection, with TLS and a
// token, and with mutual TLS and a token. Its peer, in the same run, is
// the same calls to an open node over plaintext.
func BenchmarkServerSecureGet(b *testing.B) {
	ca := testcert.NewCA(b, "bench CA")
	node := ca.Issue(b, "", "node")
	cl := ca.Issue(b, "", "client")
	tokens := benchTokens(b)
	for _, tt := range []struct {
		name string
		tls  bool
		mtls bool
	}{
		{"tls+token", true, false},
		{"mtls+token", true, true},
		{"peer=open-plaintext", false, false},
	} {
		b.Run(tt.name, func(b *testing.B) {
			srv, _ := benchServer(b, func(c *Config) {
				if tt.tls {
					c.TLS = &TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile}
					if tt.mtls {
						c.TLS.ClientCAFile = ca.CertFile
					}
					c.AuthFile = tokens
				}
			})
			dial := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
			if tt.tls {
				tc := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS13}
				if tt.mtls {
					tc.Certificates = []tls.Certificate{cl.TLS(b)}
				}
				dial = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc)), grpc.WithPerRPCCredentials(testBearer("tok-bench"))}
			}
			conn, err := grpc.NewClient(srv.GRPCAddr(), dial...)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			c := pb.NewTimerServiceClient(conn)
			ctx := context.Background()
			if _, err := c.Get(ctx, &pb.GetRequest{Id: "warm"}); status.Code(err) != codes.NotFound {
				b.Fatalf("warm-up Get: %v", err)
			}
			const workers = 16
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := range workers {
				wg.Go(func() {
					for i := w; i < b.N; i += workers {
						if _, err := c.Get(ctx, &pb.GetRequest{Id: "missing"}); status.Code(err) != codes.NotFound {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
		})
	}
}

// benchTokens writes a token file of 100 entries, the benchmark's last,
// so a check compares against all of them.
func benchTokens(b *testing.B) string {
	b.Helper()
	body := `{"tokens":[`
	for i := range 99 {
		body += fmt.Sprintf(`{"name":"t%d","token":"tok-%d","namespaces":["default"],"roles":["schedule"]},`, i, i)
	}
	body += `{"name":"bench","token":"tok-bench","namespaces":["default"],"roles":["schedule"]}]}`
	return writeTokens(b, b.TempDir(), body)
}

// testBearer is a bearer token as per-RPC credentials.
type testBearer string

func (t testBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (testBearer) RequireTransportSecurity() bool { return true }

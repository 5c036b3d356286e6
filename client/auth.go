package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// bearerToken is a token sent with every RPC as "authorization: Bearer
// <token>". It implements credentials.PerRPCCredentials.
type bearerToken struct {
	token  string
	secure bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.secure }

// WithToken sends token as the bearer token of every call: the node's
// token file (timerd --auth-file) decides which namespaces and roles it
// grants. gRPC refuses to send it over a connection without transport
// security, so a token never crosses a network in the clear: use it with
// WithTransportCredentials (or WithTLS). For a node on loopback, or a
// test, WithInsecureToken sends it over plaintext.
func WithToken(token string) Option {
	return WithDialOptions(grpc.WithPerRPCCredentials(bearerToken{token: token, secure: true}))
}

// WithInsecureToken is WithToken that also sends the token over a
// plaintext connection: anyone who can watch the traffic can take the
// token. Meant for loopback and tests.
func WithInsecureToken(token string) Option {
	return WithDialOptions(grpc.WithPerRPCCredentials(bearerToken{token: token}))
}

// TLSConfig returns a TLS 1.3 client configuration that trusts the CAs in
// the PEM file caFile (the system's roots when empty) and, when certFile
// and keyFile are set, presents that certificate for mutual TLS.
// serverName, when set, is the name the server's certificate must carry
// (default: the host of the address dialled). Pass it to WithTLS.
func TLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("client: TLS CA: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client: TLS CA %s: no PEM certificate in it", caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("client: TLS certificate and key go together; got certificate %q, key %q", certFile, keyFile)
	}
	if certFile != "" {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client: TLS key pair: %w", err)
		}
		c.Certificates = []tls.Certificate{kp}
	}
	return c, nil
}

// WithTLS connects over TLS with cfg (see TLSConfig); it is
// WithTransportCredentials(credentials.NewTLS(cfg)).
func WithTLS(cfg *tls.Config) Option {
	return WithTransportCredentials(credentials.NewTLS(cfg))
}

package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/timerd/timerd/internal/reload"
)

// TLSConfig turns on TLS (1.3 at least) for the gRPC API and for the
// calls this node makes to its peers. The files are PEM and are read
// again when they change on disk (looked at at most once per
// TLSReloadInterval, on a new connection) or when Server.Reload is
// called, so certificates rotate without a restart; connections already
// open keep the certificate they were made with.
type TLSConfig struct {
	// CertFile and KeyFile are the node's certificate (chain) and key.
	// The node serves them to clients and presents them as its client
	// certificate when it calls a peer, so with mTLS the certificate
	// needs both the serverAuth and clientAuth extended key usages, and
	// its subject alternative names must cover the address peers dial
	// (Config.AdvertiseAddr). Required.
	CertFile, KeyFile string
	// ClientCAFile, when set, turns on mutual TLS: every client (and
	// peer) must present a certificate that chains to one of these CAs.
	// Empty: clients are not asked for a certificate.
	ClientCAFile string
	// PeerCAFile holds the CAs a peer's certificate is verified against
	// when this node calls it (default: ClientCAFile, or else the
	// system's roots). Like the other files it is read again when it
	// changes (looked at when a connection to a peer is made) or on
	// Server.Reload; each new connection to a peer is verified against
	// the CAs as they are then, and a connection already open stays.
	PeerCAFile string
}

// TLSReloadInterval is how often, at most, a new connection makes the
// node look at its TLS files' modification times (1s).
const TLSReloadInterval = time.Second

// validate reports the first invalid field, by name.
func (c *TLSConfig) validate() error {
	switch {
	case c.CertFile == "":
		return errors.New("TLS.CertFile must be set")
	case c.KeyFile == "":
		return errors.New("TLS.KeyFile must be set")
	}
	return nil
}

// tlsFiles are the node's TLS material, each reloaded from its files.
//
// Invariant: every handshake, the listener's and those of the
// connections to peers, reads the values below as they are at that
// handshake; none is copied into a longer-lived tls.Config, so a rotation
// reaches every connection made after it.
type tlsFiles struct {
	cfg     TLSConfig
	cert    *reload.Value[*tls.Certificate]
	clients *reload.Value[*x509.CertPool] // nil without mTLS
	peers   *reload.Value[*x509.CertPool] // nil without TLSConfig.PeerCAFile
}

// loadTLS reads the files of c once; nil c means no TLS.
func loadTLS(c *TLSConfig, log *slog.Logger) (*tlsFiles, error) {
	if c == nil {
		return nil, nil
	}
	t := &tlsFiles{cfg: *c}
	var err error
	t.cert, err = reload.New(func() (*tls.Certificate, error) {
		kp, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("TLS key pair %s, %s: %w", c.CertFile, c.KeyFile, err)
		}
		return &kp, nil
	}, TLSReloadInterval, log, c.CertFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	if c.ClientCAFile != "" {
		if t.clients, err = reload.New(func() (*x509.CertPool, error) { return readCAs(c.ClientCAFile) },
			TLSReloadInterval, log, c.ClientCAFile); err != nil {
			return nil, err
		}
	}
	if c.PeerCAFile != "" {
		if t.peers, err = reload.New(func() (*x509.CertPool, error) { return readCAs(c.PeerCAFile) },
			TLSReloadInterval, log, c.PeerCAFile); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// readCAs reads a PEM bundle of CA certificates.
func readCAs(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("TLS CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("TLS CA file %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// serverConfig is the tls.Config of the gRPC listener. Each handshake
// gets the current certificate and client CAs.
func (t *tlsFiles) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*t.cert.Get()},
				NextProtos:   []string{"h2"},
			}
			if t.clients != nil {
				c.ClientAuth = tls.RequireAndVerifyClientCert
				c.ClientCAs = t.clients.Get()
			}
			return c, nil
		},
	}
}

// reload reads every file again.
func (t *tlsFiles) reload() error {
	err := t.cert.Reload()
	if t.clients != nil {
		err = errors.Join(err, t.clients.Reload())
	}
	if t.peers != nil {
		err = errors.Join(err, t.peers.Reload())
	}
	return err
}

// serverOptions are the gRPC server options of the listener's transport
// security; none without TLS.
func (t *tlsFiles) serverOptions() []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(t.serverConfig()))}
}

// peerDialOptions are the dial options of every connection this node
// makes to a peer: forwarded requests and anything else node to node go
// through them, so they all use the node's TLS (or none, without it).
// Each handshake verifies the peer's certificate against the current
// TLSConfig.PeerCAFile (or ClientCAFile, or the system's roots) and
// presents the node's current certificate for mTLS: gRPC makes a new
// handshake whenever it connects again, so a peer connection that drops
// comes back under the CAs of the moment.
func (t *tlsFiles) peerDialOptions() []grpc.DialOption {
	if t == nil {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(peerCreds{t: t})}
}

// peerConfig is the tls.Config of one handshake with a peer.
func (t *tlsFiles) peerConfig() *tls.Config {
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return t.cert.Get(), nil
		},
	}
	switch {
	case t.peers != nil:
		c.RootCAs = t.peers.Get()
	case t.clients != nil:
		c.RootCAs = t.clients.Get()
	}
	return c
}

// peerCreds are the transport credentials of the connections to peers.
// gRPC's TLS credentials keep the tls.Config they were made with, so
// peerCreds make new ones from tlsFiles.peerConfig for each handshake.
// They dial only: the listener has its own (tlsFiles.serverOptions).
type peerCreds struct{ t *tlsFiles }

// ClientHandshake makes the TLS handshake of a new connection to a peer,
// whose certificate must carry the host of the address dialled.
func (p peerCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(p.t.peerConfig()).ClientHandshake(ctx, authority, conn)
}

// ServerHandshake fails: peerCreds only dial.
func (peerCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("server: peer credentials make outgoing connections only")
}

// Info is that of gRPC's TLS credentials; it reads no file.
func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13}).Info()
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

// OverrideServerName is part of credentials.TransportCredentials; gRPC
// no longer calls it. peerCreds always check the address dialled, so it
// fails instead of being ignored.
func (peerCreds) OverrideServerName(string) error {
	return errors.New("server: peer credentials: OverrideServerName is not supported")
}

package main

import (
	"flag"
	"net"
	"strings"

	"github.com/timerd/timerd/client"
)

// security is how timerctl secures its calls: TLS (mutual with a
// certificate) and a bearer token.
type security struct {
	token                  string
	tls                    bool
	ca, cert, key, srvName string
}

func (s *security) flags(fs *flag.FlagSet) {
	fs.StringVar(&s.token, "token", s.token, "bearer `token` sent with every call (env TIMERD_TOKEN); needs TLS unless every --addr is loopback")
	fs.BoolVar(&s.tls, "tls", s.tls, "connect over TLS 1.3 (implied by the other --tls-* flags; without --tls-ca the system's roots verify the node)")
	fs.StringVar(&s.ca, "tls-ca", s.ca, "PEM `file` of the CAs that verify the node's certificate")
	fs.StringVar(&s.cert, "tls-cert", s.cert, "PEM `file` of a client certificate, for nodes that require mutual TLS")
	fs.StringVar(&s.key, "tls-key", s.key, "PEM `file` of the key of --tls-cert")
	fs.StringVar(&s.srvName, "tls-server-name", s.srvName, "`name` the node's certificate must carry (default: the host of --addr)")
}

// options returns the client options of s for the nodes at addrs
// (comma-separated host:port).
func (s *security) options(addrs string) ([]client.Option, error) {
	var opts []client.Option
	useTLS := s.tls || s.ca != "" || s.cert != "" || s.key != "" || s.srvName != ""
	if useTLS {
		c, err := client.TLSConfig(s.ca, s.cert, s.key, s.srvName)
		if err != nil {
			return nil, usagef("--tls-*: %v", err)
		}
		opts = append(opts, client.WithTLS(c))
	}
	switch {
	case s.token == "":
	case useTLS:
		opts = append(opts, client.WithToken(s.token))
	case allLoopback(addrs):
		opts = append(opts, client.WithInsecureToken(s.token))
	default:
		return nil, usagef("--token would cross the network in plaintext to %s: add --tls (and --tls-ca), or reach a loopback address", addrs)
	}
	return opts, nil
}

// allLoopback reports whether every address of addrs is on loopback
// (localhost, 127.0.0.0/8 or ::1).
func allLoopback(addrs string) bool {
	for a := range strings.SplitSeq(addrs, ",") {
		host, _, err := net.SplitHostPort(strings.TrimSpace(a))
		if err != nil {
			return false
		}
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return false
		}
	}
	return true
}

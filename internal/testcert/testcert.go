// Package testcert makes the certificates of TLS tests: a throwaway CA
// and certificates it signs, written as PEM files into a test's temporary
// directory. No key is ever committed; each test run makes its own.
//
// It must not be imported outside tests.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a test certificate authority.
type CA struct {
	// CertFile is the CA certificate's PEM file.
	CertFile string
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	dir      string
}

// NewCA makes a CA named name, with its certificate in the test's
// temporary directory.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	ca := &CA{cert: cert, key: key, dir: tb.TempDir()}
	ca.CertFile = filepath.Join(ca.dir, "ca.pem")
	writePEM(tb, ca.CertFile, "CERTIFICATE", der)
	return ca
}

// Pool returns a pool holding the CA's certificate.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// Bundle writes the certificates of cas into one PEM file at path (a CA
// bundle, as a CA file flag takes it), replacing it atomically, as an
// operator adding or removing a CA during a rotation should.
func Bundle(tb testing.TB, path string, cas ...*CA) {
	tb.Helper()
	var b []byte
	for _, ca := range cas {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	}
	writeFile(tb, path, b)
}

// Leaf is a certificate the CA signed, and its key.
type Leaf struct {
	CertFile, KeyFile string
	// Serial is the certificate's serial number.
	Serial *big.Int
}

// TLS returns the leaf as a tls.Certificate.
func (l Leaf) TLS(tb testing.TB) tls.Certificate {
	tb.Helper()
	c, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Issue signs a certificate for name (its common name) valid for server
// and client authentication, for localhost and 127.0.0.1 besides, and
// writes it and its key as name.pem and name-key.pem in dir (a new
// temporary directory when empty), replacing files already there.
func (ca *CA) Issue(tb testing.TB, dir, name string) Leaf {
	tb.Helper()
	if dir == "" {
		dir = tb.TempDir()
	}
	key := newKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{name, "localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	l := Leaf{CertFile: filepath.Join(dir, name+".pem"), KeyFile: filepath.Join(dir, name+"-key.pem"), Serial: tmpl.SerialNumber}
	// The key first: a reader that sees the new certificate beside the
	// old key fails to load the pair and keeps its previous one.
	writePEM(tb, l.KeyFile, "PRIVATE KEY", kder)
	writePEM(tb, l.CertFile, "CERTIFICATE", der)
	return l
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// writePEM writes one PEM block to path atomically (a rename), as an
// operator rotating a certificate should.
func writePEM(tb testing.TB, path, typ string, der []byte) {
	tb.Helper()
	writeFile(tb, path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

// writeFile writes b to path atomically: a reader sees the old file or
// the new one, never a part.
func writeFile(tb testing.TB, path string, b []byte) {
	tb.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

package tlsutil

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// Files names the PEM files a node's TLS uses.
type Files struct {
	// CertFile and KeyFile are this node's certificate and key.
	CertFile string
	KeyFile  string
	// CAFile holds the CA certificates peers' certificates are checked
	// against.
	CAFile string
}

// Enabled reports whether any file is named.
func (f Files) Enabled() bool { return f.CertFile != "" || f.KeyFile != "" || f.CAFile != "" }

// Check reports a half-configured set: mutual TLS needs all three files.
func (f Files) Check() error {
	if !f.Enabled() {
		return nil
	}
	if f.CertFile == "" || f.KeyFile == "" || f.CAFile == "" {
		return errors.New("TLS needs --tls-cert, --tls-key and --tls-ca together")
	}
	return nil
}

// loaded is one generation of certificates.
type loaded struct {
	cert    *tls.Certificate
	leaf    *x509.Certificate
	pool    *x509.CertPool
	self    Identity
	expires time.Time
}

// Store holds a node's current certificate, key and CA pool and hands out
// tls.Configs that always use the current generation: Reload (on SIGHUP)
// swaps the files in without a restart, and new connections use them.
type Store struct {
	files   Files
	cluster string
	cur     atomic.Pointer[loaded]
}

// Load reads files for a node of cluster whose own certificate must name
// role. It fails if the certificate is not signed by the CA, has expired,
// or names another role.
func Load(files Files, cluster, role string) (*Store, error) {
	if err := files.Check(); err != nil {
		return nil, err
	}
	if !files.Enabled() {
		return nil, errors.New("no TLS files configured")
	}
	if cluster == "" {
		cluster = DefaultCluster
	}
	s := &Store{files: files, cluster: cluster}
	l, err := s.read(role)
	if err != nil {
		return nil, err
	}
	s.cur.Store(l)
	return s, nil
}

// Reload reads the files again and, if they are valid, uses them for every
// new connection. On error the current certificates stay in use.
func (s *Store) Reload() error {
	l, err := s.read(s.cur.Load().self.Role)
	if err != nil {
		return err
	}
	s.cur.Store(l)
	return nil
}

// Cluster is the cluster name certificates are checked against.
func (s *Store) Cluster() string { return s.cluster }

// Self is the identity this node's own certificate names.
func (s *Store) Self() Identity { return s.cur.Load().self }

// Expires is when this node's certificate runs out.
func (s *Store) Expires() time.Time { return s.cur.Load().expires }

func (s *Store) read(role string) (*loaded, error) {
	cert, err := tls.LoadX509KeyPair(s.files.CertFile, s.files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s: %w", s.files.CertFile, err)
	}
	caPEM, err := os.ReadFile(s.files.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("CA file %s: no PEM certificates", s.files.CAFile)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("parse %s: %w", s.files.CertFile, err)
		}
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("certificate %s is not valid under CA %s: %w", s.files.CertFile, s.files.CAFile, err)
	}
	self, ok := IdentityOf(leaf, s.cluster)
	if !ok || self.Role != role {
		return nil, fmt.Errorf("certificate %s does not name %s (make one with `vbatch tls cert create --%s --cluster-name %s`)",
			s.files.CertFile, RoleName(role, s.cluster), role, s.cluster)
	}
	return &loaded{cert: &cert, leaf: leaf, pool: pool, self: self, expires: leaf.NotAfter}, nil
}

// ServerConfig is the tls.Config of a listener. With requireClient every
// client must present a certificate from the CA (RPC and raft); otherwise
// one is checked if given (the HTTPS API, whose clients use API keys).
// allow, if set, names the roles a client certificate may have; a client
// naming another role fails the handshake.
func (s *Store) ServerConfig(requireClient bool, allow ...string) *tls.Config {
	auth := tls.VerifyClientCertIfGiven
	if requireClient {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			l := s.cur.Load()
			return &tls.Config{
				MinVersion:       tls.VersionTLS12,
				NextProtos:       []string{"h2", "http/1.1"},
				Certificates:     []tls.Certificate{*l.cert},
				ClientAuth:       auth,
				ClientCAs:        l.pool,
				VerifyConnection: s.verifyRoles(allow),
			}, nil
		},
	}
}

// ClientConfig is the tls.Config for dialing a peer of role (normally
// RoleServer): the peer must present a certificate from the CA that names
// that role in this cluster, whatever address was dialed — the check
// Nomad calls verify_server_hostname. This node's certificate is offered
// as the client certificate.
func (s *Store) ClientConfig(role string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: RoleName(role, s.cluster),
		// RootCAs are checked in VerifyConnection against the current
		// generation; the standard check would pin the pool at creation.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verifyServer(cs, role)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.cur.Load().cert, nil
		},
	}
}

// verifyServer checks a server's chain against the current CA and its
// name against role.
func (s *Store) verifyServer(cs tls.ConnectionState, role string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: peer presented no certificate")
	}
	l := s.cur.Load()
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots:         l.pool,
		Intermediates: inter,
		DNSName:       RoleName(role, s.cluster),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("tls: peer is not a %s of cluster %s: %w", role, s.cluster, err)
	}
	return nil
}

// verifyRoles returns a VerifyConnection hook that refuses a client whose
// (already chain-verified) certificate names a role not in allow.
func (s *Store) verifyRoles(allow []string) func(tls.ConnectionState) error {
	if len(allow) == 0 {
		return nil
	}
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil // ClientAuth decides whether one is required
		}
		id, ok := IdentityOf(cs.PeerCertificates[0], s.cluster)
		if !ok {
			return fmt.Errorf("tls: client certificate names no role in cluster %s", s.cluster)
		}
		for _, r := range allow {
			if id.Role == r {
				return nil
			}
		}
		return fmt.Errorf("tls: a %s certificate may not connect here", id.Role)
	}
}

// PeerIdentity is the identity of a connection's verified client
// certificate, if it has one.
func (s *Store) PeerIdentity(cs *tls.ConnectionState) (Identity, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return Identity{}, false
	}
	return IdentityOf(cs.PeerCertificates[0], s.cluster)
}

// handshakeTimeout bounds a TLS handshake on raw connections, so a peer
// that connects and says nothing cannot hold a goroutine for long.
const handshakeTimeout = 10 * time.Second

// Handshake completes a TLS handshake within handshakeTimeout.
func Handshake(c *tls.Conn) error {
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	return c.HandshakeContext(ctx)
}

// DialContext dials addr and completes a client handshake with cfg.
func DialContext(ctx context.Context, d *net.Dialer, addr string, cfg *tls.Config) (*tls.Conn, error) {
	td := &tls.Dialer{NetDialer: d, Config: cfg}
	c, err := td.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return c.(*tls.Conn), nil
}

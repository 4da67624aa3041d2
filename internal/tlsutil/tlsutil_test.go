package tlsutil

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fleet is a CA and a directory to write certificates into.
type fleet struct {
	t   *testing.T
	dir string
	ca  *CA
}

func newFleet(t *testing.T, cluster string) *fleet {
	t.Helper()
	certPEM, keyPEM, err := CreateCA(cluster, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ParseCA(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, dir: t.TempDir(), ca: ca}
	f.write("ca.pem", certPEM)
	return f
}

func (f *fleet) write(name string, b []byte) string {
	p := filepath.Join(f.dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// files issues a certificate and returns its Files.
func (f *fleet) files(name string, req CertRequest) Files {
	f.t.Helper()
	if req.Validity == 0 {
		req.Validity = time.Hour
	}
	c, k, err := f.ca.Issue(req)
	if err != nil {
		f.t.Fatal(err)
	}
	return Files{CertFile: f.write(name+".pem", c), KeyFile: f.write(name+"-key.pem", k), CAFile: filepath.Join(f.dir, "ca.pem")}
}

func (f *fleet) store(name, role string, req CertRequest) *Store {
	f.t.Helper()
	s, err := Load(f.files(name, req), req.Cluster, role)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

// handshake runs one TLS connection and returns the client's and the
// server's errors and the server's view of the client.
func handshake(t *testing.T, srv, cli *tls.Config) (cerr, serr error, state tls.ConnectionState) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			serr = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		serr = Handshake(tc)
		state = tc.ConnectionState()
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err == nil {
		// TLS 1.3 clients finish before the server checked their
		// certificate; a read surfaces the server's verdict.
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = c.Read(make([]byte, 1))
		c.Close()
	}
	<-done
	return err, serr, state
}

func TestRolesAndIdentities(t *testing.T) {
	f := newFleet(t, "prod")
	server := f.store("server", RoleServer, CertRequest{Role: RoleServer, Cluster: "prod"})
	agent := f.store("agent", RoleAgent, CertRequest{Role: RoleAgent, Cluster: "prod", Node: "gpu1"})
	cli := f.store("cli", RoleCLI, CertRequest{Role: RoleCLI, Cluster: "prod"})
	if got := agent.Self(); got != (Identity{Role: RoleAgent, Node: "gpu1"}) {
		t.Fatalf("agent identity = %+v", got)
	}

	// An agent dials a server: both sides verify; the server sees gpu1.
	cerr, serr, st := handshake(t, server.ServerConfig(true, RoleServer, RoleAgent), agent.ClientConfig(RoleServer))
	if cerr != nil || serr != nil {
		t.Fatalf("agent→server: client %v, server %v", cerr, serr)
	}
	if id, ok := server.PeerIdentity(&st); !ok || id.Node != "gpu1" || id.Role != RoleAgent {
		t.Fatalf("server sees %+v %v", id, ok)
	}
	// A raft listener admits only servers: the agent is refused.
	if _, serr, _ := handshake(t, server.ServerConfig(true, RoleServer), agent.ClientConfig(RoleServer)); serr == nil {
		t.Fatal("agent certificate accepted by a server-only listener")
	}
	// The CLI cannot act as a server: an agent dialing it refuses it.
	cliSrv := &tls.Config{Certificates: []tls.Certificate{*cli.cur.Load().cert}}
	if cerr, _, _ := handshake(t, cliSrv, agent.ClientConfig(RoleServer)); cerr == nil {
		t.Fatal("client accepted a cli certificate as a server")
	}
	// An agent certificate posing as a server is refused by its peers.
	agentSrv := &tls.Config{Certificates: []tls.Certificate{*agent.cur.Load().cert}}
	if cerr, _, _ := handshake(t, agentSrv, server.ClientConfig(RoleServer)); cerr == nil || !strings.Contains(cerr.Error(), "not a server") {
		t.Fatalf("server accepted an agent certificate as a peer server: %v", cerr)
	}
	// No client certificate: refused where one is required.
	if _, serr, _ := handshake(t, server.ServerConfig(true), &tls.Config{InsecureSkipVerify: true}); serr == nil {
		t.Fatal("client without certificate accepted")
	}
}

func TestOtherCAAndClusterRefused(t *testing.T) {
	f := newFleet(t, "prod")
	server := f.store("server", RoleServer, CertRequest{Role: RoleServer, Cluster: "prod"})
	other := newFleet(t, "prod")
	rogue := other.store("rogue", RoleServer, CertRequest{Role: RoleServer, Cluster: "prod"})
	if _, serr, _ := handshake(t, server.ServerConfig(true, RoleServer), rogue.ClientConfig(RoleServer)); serr == nil {
		t.Fatal("certificate from another CA accepted")
	}
	// Same CA, other cluster: the role name does not match.
	staging, err := Load(f.files("staging", CertRequest{Role: RoleServer, Cluster: "staging"}), "staging", RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	if cerr, _, _ := handshake(t, staging.ServerConfig(true), server.ClientConfig(RoleServer)); cerr == nil {
		t.Fatal("server of another cluster accepted")
	}
}

func TestLoadChecks(t *testing.T) {
	f := newFleet(t, "prod")
	files := f.files("agent", CertRequest{Role: RoleAgent, Cluster: "prod", Node: "gpu1"})
	if _, err := Load(files, "prod", RoleServer); err == nil || !strings.Contains(err.Error(), "server.prod.vbatch") {
		t.Fatalf("agent cert loaded as server: %v", err)
	}
	if _, err := Load(Files{CertFile: files.CertFile}, "prod", RoleAgent); err == nil {
		t.Fatal("half-configured TLS accepted")
	}
	other := newFleet(t, "prod")
	files.CAFile = filepath.Join(other.dir, "ca.pem")
	if _, err := Load(files, "prod", RoleAgent); err == nil {
		t.Fatal("certificate from another CA loaded")
	}
	if _, _, err := f.ca.Issue(CertRequest{Role: RoleAgent, Cluster: "prod", Validity: time.Hour}); err == nil {
		t.Fatal("agent certificate without a node id issued")
	}
	if _, _, err := f.ca.Issue(CertRequest{Role: RoleServer, Cluster: "Prod.x", Validity: time.Hour}); err == nil {
		t.Fatal("bad cluster name accepted")
	}
}

func TestReloadSwapsCertificates(t *testing.T) {
	f := newFleet(t, "prod")
	files := f.files("server", CertRequest{Role: RoleServer, Cluster: "prod", Validity: time.Hour})
	s, err := Load(files, "prod", RoleServer)
	if err != nil {
		t.Fatal(err)
	}
	first := s.Expires()
	// Rotate: a new certificate with a longer life, same paths.
	c, k, err := f.ca.Issue(CertRequest{Role: RoleServer, Cluster: "prod", Validity: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f.write("server.pem", c)
	f.write("server-key.pem", k)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if !s.Expires().After(first.Add(24 * time.Hour)) {
		t.Fatalf("reload kept the old certificate (expires %v)", s.Expires())
	}
	agent := f.store("agent", RoleAgent, CertRequest{Role: RoleAgent, Cluster: "prod", Node: "gpu1"})
	cerr, serr, st := handshake(t, s.ServerConfig(true), agent.ClientConfig(RoleServer))
	if cerr != nil || serr != nil {
		t.Fatalf("handshake after reload: %v %v", cerr, serr)
	}
	_ = st
	// A broken file leaves the current certificates in use.
	f.write("server.pem", []byte("garbage"))
	if err := s.Reload(); err == nil {
		t.Fatal("reload of a broken certificate succeeded")
	}
	if cerr, serr, _ := handshake(t, s.ServerConfig(true), agent.ClientConfig(RoleServer)); cerr != nil || serr != nil {
		t.Fatalf("failed reload broke TLS: %v %v", cerr, serr)
	}
}

package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fleetPKI is a cluster CA and the certificates issued from it, all made
// with the real `vbatch tls` commands.
type fleetPKI struct {
	t       testing.TB
	bin     string
	dir     string
	cluster string
	CA      string // CA certificate file
	caKey   string
}

// newFleetPKI runs `vbatch tls ca create` for cluster in a fresh dir.
func newFleetPKI(t testing.TB, bin, cluster string) *fleetPKI {
	t.Helper()
	p := &fleetPKI{t: t, bin: bin, dir: t.TempDir(), cluster: cluster}
	p.run("tls", "ca", "create", "--cluster-name", cluster, "--dir", p.dir, "--days", "2")
	p.CA = filepath.Join(p.dir, "vbatch-ca.pem")
	p.caKey = filepath.Join(p.dir, "vbatch-ca-key.pem")
	return p
}

// run runs a vbatch subcommand and returns its standard output.
func (p *fleetPKI) run(args ...string) string {
	p.t.Helper()
	cmd := exec.Command(p.bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		p.t.Fatalf("vbatch %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// issue runs `vbatch tls cert create --<role> --node node` and returns the
// certificate and key files.
func (p *fleetPKI) issue(role, node string) (cert, key string) {
	p.t.Helper()
	p.run("tls", "cert", "create", "--"+role, "--node", node, "--cluster-name", p.cluster,
		"--ca", p.CA, "--ca-key", p.caKey, "--dir", p.dir, "--days", "1")
	base := filepath.Join(p.dir, fmt.Sprintf("%s-%s-vbatch-%s", p.cluster, role, node))
	return base + ".pem", base + "-key.pem"
}

// reissue replaces node's certificate files with a fresh certificate, as an
// operator rotating certificates does, and returns the new certificate.
func (p *fleetPKI) reissue(role, node string) *x509.Certificate {
	p.t.Helper()
	cert, key := p.issue(role, node+"-next")
	base := filepath.Join(p.dir, fmt.Sprintf("%s-%s-vbatch-%s", p.cluster, role, node))
	for from, to := range map[string]string{cert: base + ".pem", key: base + "-key.pem"} {
		if err := os.Rename(from, to); err != nil {
			p.t.Fatal(err)
		}
	}
	return p.leaf(base + ".pem")
}

// leaf parses a certificate file.
func (p *fleetPKI) leaf(path string) *x509.Certificate {
	p.t.Helper()
	c, err := tls.LoadX509KeyPair(path, strings.TrimSuffix(path, ".pem")+"-key.pem")
	if err != nil {
		p.t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		p.t.Fatal(err)
	}
	return leaf
}

// pool is a cert pool holding the CA.
func (p *fleetPKI) pool() *x509.CertPool {
	p.t.Helper()
	b, err := os.ReadFile(p.CA)
	if err != nil {
		p.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b)
	return pool
}

// tlsConfig is a client configuration that trusts the CA, expects
// serverName on the server's certificate and, when cert is set, presents it.
func (p *fleetPKI) tlsConfig(serverName, cert, key string) *tls.Config {
	p.t.Helper()
	cfg := &tls.Config{RootCAs: p.pool(), ServerName: serverName, MinVersion: tls.VersionTLS12}
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			p.t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg
}

// keyTransport adds a bearer API key to every request.
type keyTransport struct {
	key  string
	base http.RoundTripper
}

func (k *keyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if r.Header.Get("Authorization") == "" {
		r.Header.Set("Authorization", "Bearer "+k.key)
	}
	return k.base.RoundTrip(r)
}

// apiCall makes one API call with hc and returns the status and body.
func apiCall(hc *http.Client, method, url, key string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// attack is one row of the security test's table: what was tried and what
// the cluster answered.
type attack struct {
	What, Want, Got string
	Refused         bool
}

// attackLog collects the attacks a test tried and writes them, as the
// Markdown table docs/security.md shows, to $VBATCH_SECURITY_TABLE if set.
type attackLog struct {
	t    testing.TB
	rows []attack
}

// add records an attack; it fails the test if the attack was not refused.
func (l *attackLog) add(what, want string, refused bool, got string) {
	l.t.Helper()
	l.rows = append(l.rows, attack{What: what, Want: want, Got: got, Refused: refused})
	if !refused {
		l.t.Errorf("attack not refused: %s: want %s, got %s", what, want, got)
	}
}

// table is the Markdown table of the attacks.
func (l *attackLog) table() string {
	var b strings.Builder
	b.WriteString("| attack | expected | observed | refused |\n|---|---|---|---|\n")
	for _, r := range l.rows {
		got := strings.ReplaceAll(r.Got, "|", "\\|")
		if len(got) > 120 {
			got = got[:120] + "…"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %v |\n", r.What, r.Want, got, r.Refused)
	}
	return b.String()
}

// flush logs the table and writes it where VBATCH_SECURITY_TABLE says.
func (l *attackLog) flush() {
	l.t.Logf("attacks tried:\n%s", l.table())
	if p := os.Getenv("VBATCH_SECURITY_TABLE"); p != "" {
		if err := os.WriteFile(p, []byte(l.table()), 0o644); err != nil {
			l.t.Errorf("write security table: %v", err)
		}
	}
}

// waitLog waits until p's log contains s.
func waitLog(t testing.TB, p *Proc, s string, timeout time.Duration) {
	t.Helper()
	WaitFor(t, timeout, fmt.Sprintf("%q in %s's log", s, p.Name), func() bool { return strings.Contains(p.Log(), s) })
}

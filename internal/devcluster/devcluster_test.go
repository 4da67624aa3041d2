package devcluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/internal/netutil"
)

// TestBindHostOnlyMovesHTTP checks that --bind-host moves the HTTP
// listeners only: RPC, raft and gossip stay on loopback, and a
// non-loopback API still needs a root key unless auth is waived.
func TestBindHostOnlyMovesHTTP(t *testing.T) {
	def := Config{}
	if got := def.bindHTTP(8000); got != "127.0.0.1:8000" {
		t.Errorf("default bind %s, want 127.0.0.1:8000", got)
	}
	cfg := Config{BindHost: "0.0.0.0", DataDir: t.TempDir()}
	n := Node{ID: "c1", HTTP: cfg.dialHTTP(8000), HTTPBind: cfg.bindHTTP(8000), RPC: addr(8001), Raft: addr(8002), Gossip: addr(8003)}
	if n.HTTPBind != "0.0.0.0:8000" || n.HTTP != "127.0.0.1:8000" {
		t.Errorf("bind %s dial %s, want 0.0.0.0:8000 and 127.0.0.1:8000", n.HTTPBind, n.HTTP)
	}
	cc := cfg.coordinatorConfig(n, []string{n.Gossip})
	if cc.HTTPAddr != "0.0.0.0:8000" {
		t.Errorf("coordinator HTTP %s", cc.HTTPAddr)
	}
	for _, a := range []string{cc.RPCAddr, cc.RaftAddr, cc.GossipAddr} {
		if !netutil.IsLoopback(a) {
			t.Errorf("%s left loopback", a)
		}
	}
	if err := cc.Check(); err == nil || !strings.Contains(err.Error(), "root key") {
		t.Errorf("non-loopback API without a key: %v, want a refusal", err)
	}
	withKey := cfg
	withKey.RootKey = "dev-key"
	if cc := withKey.coordinatorConfig(n, nil); cc.Check() != nil || cc.RootKey != "dev-key" {
		t.Errorf("root key not passed through: %v", cc.Check())
	}
	noAuth := cfg
	noAuth.InsecureNoAuth = true
	if cc := noAuth.coordinatorConfig(n, nil); cc.Check() != nil {
		t.Errorf("--insecure-no-auth refused: %v", cc.Check())
	}
	ip := Config{BindHost: "10.1.2.3"}
	if ip.dialHTTP(8300) != "10.1.2.3:8300" {
		t.Errorf("dial %s for a specific host", ip.dialHTTP(8300))
	}

	// Off loopback an agent serves online inference to loopback only, and
	// tells its coordinators a loopback address; waiving auth opens it.
	an := Node{ID: "agent-1", HTTP: cfg.dialHTTP(8300), HTTPBind: cfg.bindHTTP(8300), Gossip: addr(8301)}
	ac := withKey.agentConfig(an, []string{n.Gossip})
	if !ac.OnlineFromLoopbackOnly || ac.AdvertiseAddr != "127.0.0.1:8300" || ac.MetricsAddr != "0.0.0.0:8300" {
		t.Errorf("agent off loopback: loopback-only %v, advertise %s, listen %s", ac.OnlineFromLoopbackOnly, ac.AdvertiseAddr, ac.MetricsAddr)
	}
	if err := ac.Validate(); err != nil {
		t.Error(err)
	}
	if ac := noAuth.agentConfig(an, nil); ac.OnlineFromLoopbackOnly {
		t.Error("--insecure-no-auth still keeps online inference to loopback")
	}
	keyAndNoAuth := withKey
	keyAndNoAuth.InsecureNoAuth = true
	if ac := keyAndNoAuth.agentConfig(an, nil); !ac.OnlineFromLoopbackOnly {
		t.Error("--insecure-no-auth with a root key (the API still needs the key) opened online inference on the agents")
	}
	ln := Node{ID: "agent-1", HTTP: def.dialHTTP(8300), HTTPBind: def.bindHTTP(8300)}
	if ac := def.agentConfig(ln, nil); ac.OnlineFromLoopbackOnly || ac.AdvertiseAddr != "127.0.0.1:8300" {
		t.Errorf("agent on loopback: loopback-only %v, advertise %s", ac.OnlineFromLoopbackOnly, ac.AdvertiseAddr)
	}
	// One non-loopback address cannot take the coordinators' loopback
	// connections: refused unless auth is waived.
	ip.RootKey = "dev-key"
	if err := ip.checkBindHost(); err == nil || !strings.Contains(err.Error(), "0.0.0.0") {
		t.Errorf("bind host 10.1.2.3 with a key: %v, want a refusal naming 0.0.0.0", err)
	}
	ip.InsecureNoAuth = true
	if err := ip.checkBindHost(); err == nil {
		t.Error("bind host 10.1.2.3 with a key and --insecure-no-auth: accepted, but the key keeps auth on")
	}
	ip.RootKey = ""
	for _, c := range []Config{ip, withKey, def, {BindHost: "::"}, {BindHost: "localhost"}} {
		if err := c.checkBindHost(); err != nil {
			t.Errorf("bind host %q: %v", c.BindHost, err)
		}
	}
}

// TestBindHostReachableOffLoopback starts a dev cluster with
// BindHost 0.0.0.0 and scrapes a coordinator's and an agent's /metrics
// through this host's non-loopback address, as a Dockerised Prometheus
// does through the bridge gateway.
func TestBindHostReachableOffLoopback(t *testing.T) {
	ip, err := netutil.PrivateIP()
	if err != nil {
		t.Fatal(err)
	}
	if ip == "127.0.0.1" {
		t.Skip("this host has no non-loopback IPv4 address")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cl *Cluster
	for try := 0; cl == nil; try++ {
		cl, err = Start(ctx, Config{BasePort: freeBase(t), DataDir: t.TempDir(), Agents: 1, BindHost: "0.0.0.0", RootKey: "dev-key"})
		if err != nil && (try == 9 || !strings.Contains(err.Error(), "address already in use")) {
			t.Fatal(err)
		}
	}
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), StopTimeout)
		defer scancel()
		if err := cl.Stop(sctx); err != nil {
			t.Error(err)
		}
	}()
	for _, n := range []Node{cl.Coordinators[0], cl.Agents[0]} {
		_, port, _ := net.SplitHostPort(n.HTTPBind)
		url := "http://" + net.JoinHostPort(ip, port) + "/metrics"
		resp, err := http.Get(url)
		if err != nil {
			t.Fatalf("%s: %v", n.ID, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: GET %s: %s", n.ID, url, resp.Status)
		}
	}
	if _, err := net.DialTimeout("tcp", net.JoinHostPort(ip, portOf(t, cl.Coordinators[0].RPC)), time.Second); err == nil {
		t.Error("RPC is reachable off loopback")
	}

	// The agent's listener is off loopback for /metrics only: online
	// inference there is refused, and goes through a coordinator, which
	// needs the key and reaches the agent over loopback.
	chat := `{"model":"` + Model + `","messages":[{"role":"user","content":"hi"}]}`
	agentURL := "http://" + net.JoinHostPort(ip, portOf(t, cl.Agents[0].HTTPBind)) + "/v1/chat/completions"
	if code, body := post(t, agentURL, "", chat); code != http.StatusForbidden || !strings.Contains(body, `"forbidden"`) {
		t.Errorf("online request to the agent off loopback: %d %s, want 403 forbidden", code, body)
	}
	coordURL := "http://" + net.JoinHostPort(ip, portOf(t, cl.Coordinators[0].HTTPBind)) + "/v1/chat/completions"
	if code, body := post(t, coordURL, "", chat); code != http.StatusUnauthorized {
		t.Errorf("online request to a coordinator without the key: %d %s, want 401", code, body)
	}
	// The coordinators learn of the agent through its registration and
	// gossip: wait for the request to be served.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := post(t, coordURL, "dev-key", chat)
		if code == http.StatusOK && strings.Contains(body, "choices") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("online request through a coordinator with the key: %d %s, want 200", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// post sends body to url, with key as a bearer token when set, and
// returns the status and the body of the answer.
func post(t *testing.T, url, key, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// freeBase picks a base port from the OS whose every port a dev cluster
// with agents takes (coordinators' four, the first agents' two, gossip
// over TCP and UDP) is free right now. Other packages' tests run beside
// this one and hold ports of their own, so the OS's free base alone often
// had one of the others taken. The base is low enough that the cluster's
// ports (base … base+311) fit.
func freeBase(t *testing.T) int {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if p+400 < 65535 && portsFree(p) {
			return p
		}
	}
}

// portsFree reports whether the ports of a dev cluster on base can all be
// bound now, on every address and for gossip on UDP too.
func portsFree(base int) bool {
	var ports []int
	for i := 0; i < 3; i++ {
		for k := 0; k < 4; k++ {
			ports = append(ports, base+100*i+k)
		}
	}
	for j := 0; j < 2; j++ {
		ports = append(ports, base+300+10*j, base+300+10*j+1)
	}
	for _, p := range ports {
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p))
		if err != nil {
			return false
		}
		ln.Close()
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
		if err != nil {
			return false
		}
		pc.Close()
	}
	return true
}

func portOf(t *testing.T, addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

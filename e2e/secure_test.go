package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// TestSecureCluster runs three coordinators and an agent with HTTPS,
// mutual TLS on RPC and raft, and gossip encryption, runs a batch through
// them, and then tries the attacks docs/security.md lists: each must be
// refused. The table of attacks is logged (and written to
// $VBATCH_SECURITY_TABLE when set).
func TestSecureCluster(t *testing.T) {
	bin := filepath.Join(Binaries(t), "vbatch")
	pki := newFleetPKI(t, bin, "e2e")
	keyFile := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(keyFile, []byte(pki.run("gossip", "keygen")), 0o600); err != nil {
		t.Fatal(err)
	}
	rootKey := "root-" + strings.Repeat("k", 32)
	apiTLS := pki.tlsConfig("", "", "")
	apiClient := &http.Client{Timeout: 10 * time.Second, Transport: &keyTransport{key: rootKey, base: &http.Transport{TLSClientConfig: apiTLS}}}
	serverCert := map[int][2]string{}
	for i := 0; i < 3; i++ {
		c, k := pki.issue("server", fmt.Sprintf("c%d", i+1))
		serverCert[i] = [2]string{c, k}
	}
	common := []string{"--cluster-name", "e2e", "--tls-ca", pki.CA, "--gossip-key-file", keyFile, "--root-key", rootKey}
	cl := StartCluster(t, 3, ClusterOptions{
		Extra:   common,
		PerNode: func(i int) []string { return []string{"--tls-cert", serverCert[i][0], "--tls-key", serverCert[i][1]} },
		HTTPS:   true,
		HTTP:    apiClient,
	})
	agentCert, agentKey := pki.issue("agent", "a1")
	cl.AgentFlags = func(id string) []string {
		return []string{"--cluster-name", "e2e", "--tls-cert", agentCert, "--tls-key", agentKey, "--tls-ca", pki.CA, "--gossip-key-file", keyFile}
	}
	sim := cl.StartSim(t, "sim")
	cl.StartAgent(t, "a1", "--engine", "openai", "--engine-url", "http://"+sim.Addr, "--part-lines", "50")
	cl.WaitAgents(t, 1)

	// A batch runs end to end over HTTPS, mutual TLS and encrypted gossip.
	leader := cl.Coords[cl.WaitLeader(30*time.Second)]
	runSecureBatch(t, apiClient, cl.Coords[(cl.Running(-1)[0]+1)%3].URL(), 120)

	log := &attackLog{t: t}
	defer log.flush()
	rpcURL := "https://" + leader.RPC
	statusReq := func(cfg *tls.Config) error {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
		_, err := vbatchv1connect.NewClusterServiceClient(hc, rpcURL).Status(context.Background(), connect.NewRequest(&vbatchv1.StatusRequest{}))
		return err
	}

	// 1. Plain HTTP to the HTTPS API.
	code, body, err := apiCall(&http.Client{Timeout: 5 * time.Second}, "GET", "http://"+leader.HTTP+"/v1/models", rootKey, nil)
	log.add("plain HTTP request to the API port", "refused (400)", err != nil || code == http.StatusBadRequest, fmt.Sprintf("%d %s %v", code, firstLine(body), err))

	// 2. RPC without a client certificate.
	err = statusReq(pki.tlsConfig("server.e2e.vbatch", "", ""))
	log.add("RPC call with no client certificate", "TLS handshake refused", err != nil, errString(err))

	// 3. RPC with a certificate from another CA.
	rogue := newFleetPKI(t, bin, "e2e")
	rc, rk := rogue.issue("server", "evil")
	cfg := rogue.tlsConfig("server.e2e.vbatch", rc, rk)
	cfg.RootCAs = pki.pool()
	err = statusReq(cfg)
	log.add("RPC call with a server certificate from another CA", "TLS handshake refused", err != nil, errString(err))

	// 4. An agent certificate calling coordinator-only RPC.
	err = statusReq(pki.tlsConfig("server.e2e.vbatch", agentCert, agentKey))
	log.add("agent certificate calls ClusterService.Status", "permission denied", connect.CodeOf(err) == connect.CodePermissionDenied, errString(err))

	// 5. Agent a1's certificate registering as another agent.
	a1 := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.tlsConfig("server.e2e.vbatch", agentCert, agentKey), ForceAttemptHTTP2: true}}
	_, err = vbatchv1connect.NewAgentServiceClient(a1, rpcURL).Register(context.Background(),
		connect.NewRequest(&vbatchv1.RegisterRequest{Agent: &vbatchv1.Agent{Id: "a2", Models: []string{"sim-model"}}}))
	log.add("agent a1's certificate registers as agent a2", "permission denied", connect.CodeOf(err) == connect.CodePermissionDenied, errString(err))

	// 6. An agent certificate dialing raft.
	err = dialAndRead(leader.Raft, pki.tlsConfig("server.e2e.vbatch", agentCert, agentKey))
	log.add("agent certificate connects to the raft port", "TLS handshake refused", err != nil, errString(err))
	err = dialAndRead(leader.Raft, pki.tlsConfig("server.e2e.vbatch", "", ""))
	log.add("no certificate connects to the raft port", "TLS handshake refused", err != nil, errString(err))

	// 7. A coordinator started with an agent certificate.
	out, err := runBriefly(bin, "coordinator", "--node-id", "c9", "--data-dir", t.TempDir(),
		"--http-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:0", "--gossip-addr", "127.0.0.1:0",
		"--cluster-name", "e2e", "--tls-cert", agentCert, "--tls-key", agentKey, "--tls-ca", pki.CA, "--gossip-key-file", keyFile,
		"--root-key", rootKey, "--join", leader.Gossip)
	log.add("coordinator started with an agent certificate", "refuses to start", err != nil && strings.Contains(out, "server.e2e.vbatch"), firstLine([]byte(out)))

	// 8. A coordinator with the gossip key but a server certificate from
	// another CA joins gossip: the leader must not make it a voter.
	ports := FreePorts(t, 4)
	rcArgs := []string{"coordinator", "--node-id", "evil", "--data-dir", t.TempDir(),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--rpc-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", ports[2]), "--gossip-addr", fmt.Sprintf("127.0.0.1:%d", ports[3]),
		"--bootstrap-expect", "3", "--join", leader.Gossip, "--cluster-name", "e2e",
		"--tls-cert", rc, "--tls-key", rk, "--tls-ca", rogue.CA, "--gossip-key-file", keyFile, "--root-key", rootKey}
	evil := StartProc(t, cl.Dir, "evil", bin, rcArgs...)
	leaderIdx := cl.WaitLeader(30 * time.Second)
	waitLog(t, cl.Coords[leaderIdx].Proc, "coordinator announced by gossip failed verification", 30*time.Second)
	st, err := cl.StatusOf(leaderIdx)
	n := -1
	if err == nil {
		n = len(st.Servers)
	}
	log.add("coordinator with a foreign CA's server certificate joins gossip", "never added to raft", n == 3, fmt.Sprintf("raft servers: %d", n))
	evil.Stop(5 * time.Second)

	// 9. An agent with the wrong gossip key cannot join, so never registers.
	wrongKey := filepath.Join(t.TempDir(), "wrong.key")
	if err := os.WriteFile(wrongKey, []byte(pki.run("gossip", "keygen")), 0o600); err != nil {
		t.Fatal(err)
	}
	a2Cert, a2Key := pki.issue("agent", "a2")
	cl.AgentFlags = func(string) []string {
		return []string{"--cluster-name", "e2e", "--tls-cert", a2Cert, "--tls-key", a2Key, "--tls-ca", pki.CA, "--gossip-key-file", wrongKey}
	}
	a2 := cl.StartAgent(t, "a2", "--engine", "openai", "--engine-url", "http://"+sim.Addr)
	waitLog(t, a2.Proc, "join gossip", 30*time.Second)
	listed := agentListed(t, apiClient, leader.URL(), "a2")
	log.add("agent with the wrong gossip key joins", "cannot join gossip, never registers", !listed, "join failed; listed="+fmt.Sprint(listed))
	a2.Stop(5 * time.Second)

	// 10. One project's key cannot see or touch another's files and
	// batches; quotas and rate limits answer 429.
	base := leader.URL()
	alpha := createKey(t, apiClient, base, map[string]any{"project": "alpha", "scopes": []string{"batch"}})
	beta := createKey(t, apiClient, base, map[string]any{"project": "beta", "scopes": []string{"batch"}})
	alphaHTTP := &http.Client{Timeout: 10 * time.Second, Transport: &keyTransport{key: alpha, base: &http.Transport{TLSClientConfig: apiTLS}}}
	fileID, err := chaosUploadWith(alphaHTTP, base, "alpha.jsonl", chaosLines("alpha", 3))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := json.Marshal(map[string]string{"input_file_id": fileID, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
	code, body, err = apiCall(alphaHTTP, "POST", base+"/v1/batches", "", req)
	if err != nil || code != http.StatusOK {
		t.Fatalf("alpha batch: %d %s %v", code, body, err)
	}
	var ab chaosBatch
	_ = json.Unmarshal(body, &ab)
	// Let alpha's batch finish, so its output file exists too.
	WaitFor(t, 60*time.Second, "alpha's batch completed", func() bool {
		code, body, err := apiCall(alphaHTTP, "GET", base+"/v1/batches/"+ab.ID, "", nil)
		return err == nil && code == 200 && json.Unmarshal(body, &ab) == nil && ab.Status == "completed"
	})
	betaHTTP := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: apiTLS}}
	names := strings.NewReplacer(fileID, "{alpha file}", ab.ID, "{alpha batch}", ab.OutputFileID, "{alpha output}")
	useAlphaFile, _ := json.Marshal(map[string]string{"input_file_id": fileID, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
	for _, probe := range []struct {
		method, path string
		body         []byte
	}{
		{"GET", "/v1/files/" + fileID, nil}, {"GET", "/v1/files/" + fileID + "/content", nil}, {"DELETE", "/v1/files/" + fileID, nil},
		{"GET", "/v1/files/" + ab.OutputFileID, nil}, {"GET", "/v1/files/" + ab.OutputFileID + "/content", nil},
		{"DELETE", "/v1/files/" + ab.OutputFileID, nil},
		{"GET", "/v1/batches/" + ab.ID, nil}, {"POST", "/v1/batches/" + ab.ID + "/cancel", nil},
		{"POST", "/v1/batches", useAlphaFile},
	} {
		code, body, err := apiCall(betaHTTP, probe.method, base+probe.path, beta, probe.body)
		what := "project beta's key: " + probe.method + " " + names.Replace(probe.path)
		if probe.body != nil {
			what += " on {alpha file}"
		}
		log.add(what, "404", err == nil && code == http.StatusNotFound, fmt.Sprintf("%d %s", code, firstLine(body)))
	}
	for _, list := range []string{"/v1/files", "/v1/batches"} {
		code, body, err := apiCall(betaHTTP, "GET", base+list, beta, nil)
		leaked := strings.Contains(string(body), fileID) || strings.Contains(string(body), ab.ID) || strings.Contains(string(body), ab.OutputFileID)
		log.add("project beta's key lists "+list, "alpha's objects absent", err == nil && code == 200 && !leaked, fmt.Sprintf("%d, alpha's ids present: %v", code, leaked))
	}
	// Alpha still has everything.
	if code, _, err := apiCall(alphaHTTP, "GET", base+"/v1/files/"+ab.OutputFileID+"/content", "", nil); err != nil || code != 200 {
		t.Fatalf("alpha's own output after beta's attempts: %d %v", code, err)
	}
	slow := createKey(t, apiClient, base, map[string]any{"project": "gamma", "scopes": []string{"batch"}, "limits": map[string]any{"requests_per_second": 1}})
	limited := 0
	var last []byte
	for range 6 {
		code, body, _ := apiCall(&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: apiTLS}}, "GET", base+"/v1/files", slow, nil)
		if code == http.StatusTooManyRequests {
			limited++
			last = body
		}
	}
	log.add("6 requests at once with a 1 request/s key", "429 rate_limit_exceeded", limited > 0 && strings.Contains(string(last), "rate_limit_exceeded"), fmt.Sprintf("%d answered 429: %s", limited, firstLine(last)))
	small := createKey(t, apiClient, base, map[string]any{"project": "delta", "scopes": []string{"batch"}, "limits": map[string]any{"max_file_bytes": 100}})
	smallHTTP := &http.Client{Timeout: 10 * time.Second, Transport: &keyTransport{key: small, base: &http.Transport{TLSClientConfig: apiTLS}}}
	_, err = chaosUploadWith(smallHTTP, base, "big.jsonl", chaosLines("big", 20))
	log.add("upload past the project's 100-byte file quota", "429 insufficient_quota", err != nil && strings.Contains(err.Error(), "429") && strings.Contains(err.Error(), "insufficient_quota"), errString(err))
	enq := createKey(t, apiClient, base, map[string]any{"project": "eps", "scopes": []string{"batch"}, "limits": map[string]any{"max_enqueued_requests": 2}})
	enqHTTP := &http.Client{Timeout: 10 * time.Second, Transport: &keyTransport{key: enq, base: &http.Transport{TLSClientConfig: apiTLS}}}
	fid, err := chaosUploadWith(enqHTTP, base, "enq.jsonl", chaosLines("enq", 5))
	if err != nil {
		t.Fatal(err)
	}
	req, _ = json.Marshal(map[string]string{"input_file_id": fid, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
	code, body, err = apiCall(enqHTTP, "POST", base+"/v1/batches", "", req)
	log.add("5-request batch with a 2-request enqueued quota", "429 insufficient_quota", err == nil && code == 429 && strings.Contains(string(body), "insufficient_quota"), fmt.Sprintf("%d %s", code, firstLine(body)))

	// 11. Gossip key rotation with vbctl over HTTPS: afterwards a node with
	// only the new key joins and one with only the old key cannot.
	vbctl := func(args ...string) (string, error) {
		full := append([]string{"--addr", base, "--api-key", rootKey, "--ca-cert", pki.CA}, args...)
		out, err := exec.Command(filepath.Join(filepath.Dir(bin), "vbctl"), full...).CombinedOutput()
		return string(out), err
	}
	oldKey, _ := os.ReadFile(keyFile)
	newKey := strings.TrimSpace(pki.run("gossip", "keygen"))
	for _, args := range [][]string{{"install", newKey}, {"use", newKey}, {"remove", strings.TrimSpace(string(oldKey))}} {
		if out, err := vbctl(append([]string{"cluster", "keyring"}, args...)...); err != nil {
			t.Fatalf("vbctl cluster keyring %s: %v\n%s", args[0], err, out)
		}
	}
	out, err = vbctl("cluster", "keyring", "list", "-o", "json")
	var kr struct {
		NumNodes    int            `json:"num_nodes"`
		Keys        map[string]int `json:"keys"`
		PrimaryKeys map[string]int `json:"primary_keys"`
	}
	if err != nil || json.Unmarshal([]byte(out), &kr) != nil || kr.Keys[newKey] != kr.NumNodes || kr.PrimaryKeys[newKey] != kr.NumNodes || len(kr.Keys) != 1 {
		t.Fatalf("keyring after rotation: %v %s", err, out)
	}
	newKeyFile := filepath.Join(t.TempDir(), "new.key")
	if err := os.WriteFile(newKeyFile, []byte(newKey), 0o600); err != nil {
		t.Fatal(err)
	}
	a3Cert, a3Key := pki.issue("agent", "a3")
	cl.AgentFlags = func(string) []string {
		return []string{"--cluster-name", "e2e", "--tls-cert", a3Cert, "--tls-key", a3Key, "--tls-ca", pki.CA, "--gossip-key-file", newKeyFile}
	}
	cl.StartAgent(t, "a3", "--engine", "openai", "--engine-url", "http://"+sim.Addr)
	WaitFor(t, 30*time.Second, "a3, holding the new gossip key, registered", func() bool { return agentListed(t, apiClient, base, "a3") })
	a4Cert, a4Key := pki.issue("agent", "a4")
	cl.AgentFlags = func(string) []string {
		return []string{"--cluster-name", "e2e", "--tls-cert", a4Cert, "--tls-key", a4Key, "--tls-ca", pki.CA, "--gossip-key-file", keyFile}
	}
	a4 := cl.StartAgent(t, "a4", "--engine", "openai", "--engine-url", "http://"+sim.Addr)
	waitLog(t, a4.Proc, "join gossip", 30*time.Second)
	listed = agentListed(t, apiClient, base, "a4")
	log.add("agent with the removed gossip key joins after rotation", "cannot join", !listed, "listed="+fmt.Sprint(listed))
	a4.Stop(5 * time.Second)

	// 12. Certificates rotate on SIGHUP without a restart.
	c1 := cl.Coords[0]
	next := pki.reissue("server", "c1")
	if err := c1.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 10*time.Second, "c1 serving its new certificate", func() bool {
		conn, err := tls.Dial("tcp", c1.HTTP, pki.tlsConfig("server.e2e.vbatch", "", ""))
		if err != nil {
			return false
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Cmp(next.SerialNumber) == 0
	})
	// The expiry metric follows the reload; autopilot's view is on every
	// coordinator's /metrics.
	code, body, err = apiCall(apiClient, "GET", c1.URL()+"/metrics", "", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("metrics: %d %v", code, err)
	}
	// Compared as a number: the exposition format writes the shortest
	// float (1.7958988e+09 for ...800), not a fixed layout.
	var gotExpiry float64
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "vbatch_tls_certificate_expiry_timestamp_seconds "); ok {
			gotExpiry, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if int64(gotExpiry) != next.NotAfter.Unix() {
		t.Errorf("vbatch_tls_certificate_expiry_timestamp_seconds = %v, want %d", gotExpiry, next.NotAfter.Unix())
	}
	if !strings.Contains(string(body), "vbatch_autopilot_failure_tolerance") {
		t.Errorf("metrics lack the autopilot figures")
	}
	// The cluster still works after the rotation.
	runSecureBatch(t, apiClient, c1.URL(), 20)
}

// runSecureBatch uploads n requests through base, runs them as a batch and
// checks every request is answered exactly once.
func runSecureBatch(t *testing.T, hc *http.Client, base string, n int) {
	t.Helper()
	id, err := chaosUploadWith(hc, base, "secure.jsonl", chaosLines("sec", n))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := json.Marshal(map[string]string{"input_file_id": id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
	code, body, err := apiCall(hc, "POST", base+"/v1/batches", "", req)
	if err != nil || code != http.StatusOK {
		t.Fatalf("create batch: %d %s %v", code, body, err)
	}
	var b chaosBatch
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 60*time.Second, "secure batch completed", func() bool {
		code, body, err := apiCall(hc, "GET", base+"/v1/batches/"+b.ID, "", nil)
		return err == nil && code == http.StatusOK && json.Unmarshal(body, &b) == nil && b.Status == "completed"
	})
	code, out, err := apiCall(hc, "GET", base+"/v1/files/"+b.OutputFileID+"/content", "", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("output: %d %v", code, err)
	}
	seen := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r struct {
			CustomID string `json:"custom_id"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("output line %q: %v", line, err)
		}
		seen[r.CustomID]++
	}
	if len(seen) != n || b.RequestCounts.Completed != int64(n) {
		t.Fatalf("secure batch: %d distinct outputs, %d completed, want %d", len(seen), b.RequestCounts.Completed, n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Fatalf("custom_id %s answered %d times", id, c)
		}
	}
}

// dialAndRead opens a TLS connection and reads from it: with TLS 1.3 a
// server's refusal of the client certificate shows on the first read.
func dialAndRead(addr string, cfg *tls.Config) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil // the server kept the connection: accepted
	}
	return err
}

// runBriefly runs the binary, which is expected to exit on its own, and
// returns its combined output and exit error; it is killed after 20s.
func runBriefly(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// agentListed reports whether the cluster lists agent id.
func agentListed(t *testing.T, hc *http.Client, base, id string) bool {
	t.Helper()
	code, body, err := apiCall(hc, "GET", base+"/v1/admin/agents", "", nil)
	if err != nil || code != http.StatusOK {
		t.Fatalf("list agents: %d %v", code, err)
	}
	return strings.Contains(string(body), `"`+id+`"`)
}

func errString(err error) string {
	if err == nil {
		return "accepted"
	}
	return err.Error()
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// TestSIGHUPWithoutTLS: `systemctl reload` sends SIGHUP; a node with
// nothing to reload must keep running.
func TestSIGHUPWithoutTLS(t *testing.T) {
	cl := StartCluster(t, 1, ClusterOptions{})
	c := cl.Coords[0]
	if err := c.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, c.Proc, "no certificates to reload", 10*time.Second)
	if _, err := cl.StatusOf(0); err != nil {
		t.Fatalf("coordinator gone after SIGHUP: %v", err)
	}
}

// createKey creates an API key with the root client and returns its secret.
func createKey(t *testing.T, hc *http.Client, base string, req map[string]any) string {
	t.Helper()
	b, _ := json.Marshal(req)
	code, body, err := apiCall(hc, "POST", base+"/v1/admin/keys", "", b)
	if err != nil || code/100 != 2 {
		t.Fatalf("create key %v: %d %s %v", req, code, body, err)
	}
	var k struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal(body, &k); err != nil || k.Key == "" {
		t.Fatalf("create key: %s", body)
	}
	return k.Key
}

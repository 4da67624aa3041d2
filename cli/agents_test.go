package cli

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

func TestAgentsList(t *testing.T) {
	f := newFakeServer(t)
	seen := testNow.Unix() - 75
	body := fmt.Sprintf(`{"object":"list","data":[`+
		`{"id":"gpu-host-1","rpc_addr":"10.0.1.1:8001","models":["llama-3-8b","qwen-7b"],"gpus":[`+
		`{"index":0,"name":"NVIDIA H100 80GB HBM3","uuid":"GPU-1","memory_total_bytes":85520809984},`+
		`{"index":1,"name":"NVIDIA H100 80GB HBM3","uuid":"GPU-2","memory_total_bytes":85520809984},`+
		`{"index":2,"name":"NVIDIA L4","memory_total_bytes":24152899584}],`+
		`"live_leases":3,"state":"alive","last_seen":%d,"registered_at":1795780000},`+
		`{"id":"sim-1","rpc_addr":"127.0.0.1:9001","models":[],"gpus":[],"live_leases":0,"state":"dead","last_seen":0,"registered_at":1795780000}`+
		`]}`, seen)
	f.reply("GET /v1/admin/agents", 200, body)

	r := f.run("agents", "list").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/admin/agents", "")
	checkLines(t, r.stdout, `ID          STATE  ADDRESS         MODELS              GPUS                                                          LEASES  LAST SEEN
gpu-host-1  alive  10.0.1.1:8001   llama-3-8b,qwen-7b  2x NVIDIA H100 80GB HBM3 (79.6 GiB), 1x NVIDIA L4 (22.5 GiB)  3       1m15s ago
sim-1       dead   127.0.0.1:9001  -                   0                                                             0       never
`)
	r = f.run("agents", "list", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, body)
}

func TestAgentsDrain(t *testing.T) {
	f := newFakeServer(t)
	f.reply("POST /v1/admin/agents/{id}/drain", 200, `{"id":"gpu-host-1","draining":true}`)
	r := f.run("agents", "drain", "gpu-host-1").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/admin/agents/gpu-host-1/drain", "")
	if r.stdout != "Draining gpu-host-1\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	r = f.run("agents", "drain", "gpu-host-1", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, `{"id":"gpu-host-1","draining":true}`)

	f.reply("POST /v1/admin/agents/{id}/undrain", 200, `{"id":"gpu-host-1","draining":false}`)
	r = f.run("agents", "undrain", "gpu-host-1").ok(t)
	reqs := f.requests()
	checkRequest(t, reqs[len(reqs)-1], "POST", "/v1/admin/agents/gpu-host-1/undrain", "")
	if r.stdout != "Undrained gpu-host-1\n" {
		t.Fatalf("stdout %q", r.stdout)
	}
	r = f.run("agents", "undrain", "gpu-host-1", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, `{"id":"gpu-host-1","draining":false}`)

	f.reply("POST /v1/admin/agents/nope/drain", 404, openAIError("No such agent: nope", "invalid_request_error", "not_found"))
	r = f.run("agents", "drain", "nope")
	if r.code != 1 || r.stderr != "Error: No such agent: nope (HTTP 404, not_found)\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestAgentsDrainWait(t *testing.T) {
	f := newFakeServer(t)
	f.reply("POST /v1/admin/agents/{id}/drain", 200, `{"id":"a1","draining":true}`)
	// The agent hands back one lease per poll; the second poll fails as a
	// coordinator restarting would, and the wait rides it out.
	var polls atomic.Int32
	f.handle("GET /v1/admin/agents", func(w http.ResponseWriter, _ *http.Request) {
		n := polls.Add(1)
		if n == 2 {
			writeBody(w, 503, openAIError("No raft leader.", "server_error", "service_unavailable"))
			return
		}
		leases := max(0, 4-int(n))
		writeBody(w, 200, fmt.Sprintf(`{"object":"list","data":[`+
			`{"id":"a0","rpc_addr":"x","models":[],"gpus":[],"live_leases":9,"state":"alive","last_seen":1},`+
			`{"id":"a1","rpc_addr":"y","models":[],"gpus":[],"live_leases":%d,"state":"draining","last_seen":1}]}`, leases))
	})
	r := f.run("agents", "drain", "a1", "--wait", "--poll", "1ms").ok(t)
	if got := polls.Load(); got != 4 {
		t.Errorf("polled %d times, want 4 (until a1 held no lease)", got)
	}
	for _, want := range []string{"a1 holds 3 live lease(s)\n", "Warning: No raft leader. (HTTP 503, service_unavailable) (retrying)\n",
		"a1 holds 1 live lease(s)\n", "a1 holds no live lease\n"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if strings.Contains(r.stderr, "9 live") {
		t.Errorf("stderr shows another agent's leases:\n%s", r.stderr)
	}
}

func TestAgentsRemove(t *testing.T) {
	f := newFakeServer(t)
	f.reply("DELETE /v1/admin/agents/{id}", 200, `{"id":"gpu-host-1","object":"agent","deleted":true}`)
	r := f.run("agents", "remove", "gpu-host-1").ok(t)
	checkRequest(t, f.only(), "DELETE", "/v1/admin/agents/gpu-host-1", "")
	if r.stdout != "Removed gpu-host-1\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	r = f.run("agents", "remove", "gpu-host-1", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, `{"id":"gpu-host-1","object":"agent","deleted":true}`)

	f.reply("DELETE /v1/admin/agents/live", 409, openAIError("Remove agent live: conflict: agent live is alive in gossip; stop it first.", "invalid_request_error", "conflict"))
	r = f.run("agents", "remove", "live")
	if r.code != 1 || r.stderr != "Error: Remove agent live: conflict: agent live is alive in gossip; stop it first. (HTTP 409, conflict)\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if r := f.run("agents", "remove"); r.code != 1 || !strings.Contains(r.stderr, "--help' for usage") {
		t.Errorf("no id: exit %d, stderr %q, want a usage error", r.code, r.stderr)
	}
}

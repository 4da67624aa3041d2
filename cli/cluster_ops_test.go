package cli

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClusterTransferLeadership(t *testing.T) {
	f := newFakeServer(t)
	f.reply("POST /v1/admin/cluster/transfer-leadership", 200, `{"leader":"c3"}`)
	r := f.run("cluster", "transfer-leadership", "--to", "c3").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/admin/cluster/transfer-leadership", "")
	checkJSONBody(t, req, `{"to":"c3"}`)
	if r.stdout != "Leader is now c3\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	r = f.run("cluster", "transfer-leadership", "-o", "json").ok(t)
	checkJSONBody(t, f.requests()[1], `{"to":""}`)
	checkSameJSON(t, r.stdout, `{"leader":"c3"}`)
}

func TestClusterRemovePeer(t *testing.T) {
	f := newFakeServer(t)
	f.handle("POST /v1/admin/cluster/remove-peer", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), `"c1"`) {
			writeBody(w, 409, openAIError("Server 'c1' is the leader; transfer leadership away from it first.", "invalid_request_error", "conflict"))
			return
		}
		if strings.Contains(string(body), `"c2"`) && !strings.Contains(string(body), `"force":true`) {
			writeBody(w, 409, openAIError("Removing 'c2' would leave 2 voters of which 1 are healthy (c1), not a majority (2).", "invalid_request_error", "unsafe_removal"))
			return
		}
		writeBody(w, 200, `{"id":"c3","removed":true}`)
	})
	r := f.run("cluster", "remove-peer", "c3").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/admin/cluster/remove-peer", "")
	checkJSONBody(t, req, `{"id":"c3"}`)
	if r.stdout != "Removed c3\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	r = f.run("cluster", "remove-peer", "c1")
	if r.code == 0 || !strings.Contains(r.stderr, "is the leader") {
		t.Errorf("removing the leader: exit %d, stderr %q", r.code, r.stderr)
	}
	r = f.run("cluster", "remove-peer", "c2")
	if r.code == 0 || !strings.Contains(r.stderr, "1 are healthy") {
		t.Errorf("unsafe removal: exit %d, stderr %q", r.code, r.stderr)
	}
	f.run("cluster", "remove-peer", "--force", "c2").ok(t)
	reqs := f.requests()
	checkJSONBody(t, reqs[len(reqs)-1], `{"id":"c2","force":true}`)
	if r := f.run("cluster", "remove-peer"); r.code != 1 || !strings.Contains(r.stderr, "--help' for usage") {
		t.Errorf("no id: exit %d, stderr %q, want a usage error", r.code, r.stderr)
	}
}

func TestClusterJoin(t *testing.T) {
	f := newFakeServer(t)
	f.reply("POST /v1/admin/cluster/join", 200, `{"contacted":2}`)
	r := f.run("cluster", "join", "10.0.0.4:8003, 10.0.0.5:8003").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/admin/cluster/join", "")
	checkJSONBody(t, req, `{"addresses":["10.0.0.4:8003","10.0.0.5:8003"]}`)
	if r.stdout != "Joined: 2 of 2 addresses answered\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	if r := f.run("cluster", "join", ","); r.code != 1 || !strings.Contains(r.stderr, "--help' for usage") {
		t.Errorf("no address: exit %d, stderr %q, want a usage error", r.code, r.stderr)
	}
	if n := len(f.requests()); n != 1 {
		t.Errorf("a usage error sent a request (%d requests)", n)
	}
}

func TestClusterSnapshotSaveRestore(t *testing.T) {
	f := newFakeServer(t)
	snap := bytes.Repeat([]byte{0, 1, 2, 0xff}, 5000)
	f.handle("GET /v1/admin/cluster/snapshot", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("X-Vbatch-Snapshot-Index", "777")
		_, _ = w.Write(snap)
	})
	var got []byte
	f.handle("POST /v1/admin/cluster/snapshot/restore", func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		writeBody(w, 200, `{"restored":true,"index":1234}`)
	})
	out := filepath.Join(t.TempDir(), "state.snap")
	r := f.run("cluster", "snapshot", "save", out).ok(t)
	checkRequest(t, f.only(), "GET", "/v1/admin/cluster/snapshot", "")
	saved, err := os.ReadFile(out)
	if err != nil || !bytes.Equal(saved, snap) {
		t.Fatalf("saved %d bytes (err %v), want %d", len(saved), err, len(snap))
	}
	if _, err := os.Stat(out + ".part"); !os.IsNotExist(err) {
		t.Errorf(".part left behind: %v", err)
	}
	if !strings.HasPrefix(r.stderr, "Wrote "+out) || !strings.Contains(r.stderr, "raft index 777") {
		t.Errorf("stderr = %q, want the file and the raft index", r.stderr)
	}
	r = f.run("cluster", "snapshot", "save", out, "-o", "json").ok(t)
	if want := fmt.Sprintf(`{"bytes":%d,"index":777,"path":%q}`, len(snap), out); !strings.Contains(strings.Join(strings.Fields(r.stdout), ""), want) {
		t.Errorf("json = %q, want %s", r.stdout, want)
	}

	r = f.run("cluster", "snapshot", "restore", out).ok(t)
	req := f.requests()[2]
	checkRequest(t, req, "POST", "/v1/admin/cluster/snapshot/restore", "")
	if req.ContentType != "application/octet-stream" || !bytes.Equal(got, snap) {
		t.Errorf("restore sent %q, %d bytes", req.ContentType, len(got))
	}
	if r.stdout != "Restored "+out+" (raft index 1234)\n" {
		t.Errorf("stdout = %q", r.stdout)
	}
	r = f.run("cluster", "snapshot", "restore", out, "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, `{"restored":true,"index":1234}`)
}

func TestClusterSnapshotSaveFailureLeavesNoFile(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/admin/cluster/snapshot", 503, openAIError("The cluster cannot serve this request right now.", "server_error", "service_unavailable"))
	out := filepath.Join(t.TempDir(), "state.snap")
	r := f.run("cluster", "snapshot", "save", out)
	if r.code == 0 {
		t.Fatal("save succeeded against a failing server")
	}
	for _, p := range []string{out, out + ".part"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s exists after a failed save: %v", p, err)
		}
	}
	if r := f.run("cluster", "snapshot", "restore", filepath.Join(t.TempDir(), "missing")); r.code == 0 {
		t.Error("restore of a missing file succeeded")
	}
}

package cli

import (
	"strings"
	"testing"
)

const clusterStatusBody = `{"leader":"c2","servers":[` +
	`{"id":"c1","raft_addr":"10.0.0.1:8002","http_addr":"10.0.0.1:8000","rpc_addr":"10.0.0.1:8001","suffrage":"voter","state":"follower","last_index":120,"term":3,"reachable":true},` +
	`{"id":"c2","raft_addr":"10.0.0.2:8002","http_addr":"10.0.0.2:8000","rpc_addr":"10.0.0.2:8001","suffrage":"voter","state":"leader","last_index":121,"term":3,"reachable":true},` +
	`{"id":"c3","raft_addr":"10.0.0.3:8002","http_addr":"","rpc_addr":"","suffrage":"nonvoter","state":"","last_index":0,"term":0,"reachable":false}]}`

func TestClusterStatus(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/admin/cluster/status", 200, clusterStatusBody)

	r := f.run("cluster", "status").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/admin/cluster/status", "")
	checkLines(t, r.stdout, `ID  STATE        SUFFRAGE  RAFT ADDR      HTTP ADDR      LAST INDEX  LEADER
c1  follower     voter     10.0.0.1:8002  10.0.0.1:8000  120
c2  leader       voter     10.0.0.2:8002  10.0.0.2:8000  121         *
c3  unreachable  nonvoter  10.0.0.3:8002  -              0
`)
	if r.stderr != "" {
		t.Errorf("stderr = %q", r.stderr)
	}

	r = f.run("cluster", "status", "-o", "json").ok(t)
	checkSameJSON(t, r.stdout, clusterStatusBody)
}

func TestClusterStatusWithoutLeader(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/admin/cluster/status", 200, `{"leader":"","servers":[{"id":"c1","state":"candidate","reachable":true}]}`)
	r := f.run("cluster", "status").ok(t)
	if strings.Contains(r.stdout, "*") {
		t.Errorf("a server is marked leader:\n%s", r.stdout)
	}
	if !strings.Contains(r.stderr, "no leader") {
		t.Errorf("stderr = %q, want a no-leader warning", r.stderr)
	}
}

package cli

import (
	"strings"
	"testing"
)

const clusterStatusBody = `{"leader":"c2","servers":[` +
	`{"id":"c1","raft_addr":"10.0.0.1:8002","http_addr":"10.0.0.1:8000","rpc_addr":"10.0.0.1:8001","suffrage":"voter","state":"follower","last_index":120,"term":3,"reachable":true,"log_write_ms":2.5,"fsm_level":2},` +
	`{"id":"c2","raft_addr":"10.0.0.2:8002","http_addr":"10.0.0.2:8000","rpc_addr":"10.0.0.2:8001","suffrage":"voter","state":"leader","last_index":121,"term":3,"reachable":true,"log_write_ms":412,"fsm_level":2},` +
	`{"id":"c3","raft_addr":"10.0.0.3:8002","http_addr":"","rpc_addr":"","suffrage":"nonvoter","state":"","last_index":0,"term":0,"reachable":false,"fsm_level":1}],` +
	`"autopilot":{"healthy":false,"failure_tolerance":0,"stabilization_time":"10s","dead_server_grace":"5m0s","servers":[` +
	`{"id":"c1","node_status":"alive","raft_state":"voter","healthy":true,"stable_since":"2026-11-27T03:00:00Z"},` +
	`{"id":"c2","node_status":"alive","raft_state":"leader","healthy":true,"stable_since":"2026-11-27T03:00:00Z"},` +
	`{"id":"c3","node_status":"failed","raft_state":"non-voter","healthy":false}]}}`

func TestClusterStatus(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/admin/cluster/status", 200, clusterStatusBody)

	r := f.run("cluster", "status").ok(t)
	checkRequest(t, f.only(), "GET", "/v1/admin/cluster/status", "")
	checkLines(t, r.stdout, `ID  STATE        SUFFRAGE  RAFT ADDR      HTTP ADDR      LAST INDEX  LOG WRITE  FSM  LEADER  HEALTH
c1  follower     voter     10.0.0.1:8002  10.0.0.1:8000  120         2.5ms      2            healthy since 2026-11-27T03:00:00Z
c2  leader       voter     10.0.0.2:8002  10.0.0.2:8000  121         412.0ms    2    *       healthy since 2026-11-27T03:00:00Z
c3  unreachable  nonvoter  10.0.0.3:8002  -              0           -          1            unhealthy (failed)

Autopilot: UNHEALTHY, failure tolerance 0, stabilization time 10s, dead server grace 5m0s
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

func TestClusterKeyring(t *testing.T) {
	f := newFakeServer(t)
	f.reply("POST /v1/admin/cluster/keyring", 200,
		`{"op":"list","num_nodes":4,"num_resp":4,"num_err":0,"keys":{"QUFB":4,"QkJC":2},"primary_keys":{"QUFB":4}}`)
	r := f.run("cluster", "keyring", "list").ok(t)
	req := f.only()
	checkRequest(t, req, "POST", "/v1/admin/cluster/keyring", "")
	checkJSONBody(t, req, `{"key":"","op":"list"}`)
	checkLines(t, r.stdout, `KEY   NODES  PRIMARY ON
QUFB  4/4    4
QkJC  2/4    0
`)

	f = newFakeServer(t)
	f.reply("POST /v1/admin/cluster/keyring", 200, `{"op":"install","num_nodes":4,"num_resp":4,"num_err":0}`)
	r = f.run("cluster", "keyring", "install", "QkJC").ok(t)
	req = f.only()
	checkRequest(t, req, "POST", "/v1/admin/cluster/keyring", "")
	checkJSONBody(t, req, `{"key":"QkJC","op":"install"}`)
	if !strings.Contains(r.stdout, "install done on 4 of 4 nodes") {
		t.Errorf("stdout = %q", r.stdout)
	}
	if r := f.run("cluster", "keyring", "use"); r.code == 0 {
		t.Error("keyring use without a key succeeded")
	}
}

package gossip

import (
	"strings"
	"sync"
	"testing"
	"time"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func start(t *testing.T, name string, meta Meta, onEvent func(Event)) *Pool {
	t.Helper()
	p, err := Start(Config{Name: name, BindAddr: "127.0.0.1:0", Meta: meta, ProbeInterval: 500 * time.Millisecond, OnEvent: onEvent})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return p
}

func TestMembershipRolesMetaAndLeave(t *testing.T) {
	var mu sync.Mutex
	var events []string
	c1 := start(t, "c1", Meta{Role: RoleCoordinator, RPCAddr: "127.0.0.1:1", Expect: 3}, func(e Event) {
		mu.Lock()
		events = append(events, e.Kind+":"+e.Member.Name)
		mu.Unlock()
	})
	defer c1.Leave(time.Second)
	a1 := start(t, "a1", Meta{Role: RoleAgent, Models: []string{"m1", "m2"}, GPUs: 8}, nil)
	if _, err := a1.Join([]string{c1.Addr()}); err != nil {
		t.Fatalf("join: %v", err)
	}
	waitFor(t, "both members on both sides", func() bool { return len(c1.Members()) == 2 && len(a1.Members()) == 2 })
	agents := c1.MembersWithRole(RoleAgent)
	if len(agents) != 1 || agents[0].Name != "a1" || agents[0].Meta.GPUs != 8 || strings.Join(agents[0].Meta.Models, ",") != "m1,m2" {
		t.Fatalf("agents seen by c1: %+v", agents)
	}
	if co, ok := a1.Member("c1"); !ok || co.Meta.RPCAddr != "127.0.0.1:1" || co.Meta.Expect != 3 {
		t.Fatalf("coordinator seen by a1: %+v %v", co, ok)
	}
	if err := a1.UpdateMeta(Meta{Role: RoleAgent, Models: []string{"m3"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "updated meta", func() bool {
		m, ok := c1.Member("a1")
		return ok && len(m.Meta.Models) == 1 && m.Meta.Models[0] == "m3"
	})
	if err := a1.Leave(time.Second); err != nil {
		t.Logf("leave: %v", err)
	}
	waitFor(t, "a1 gone", func() bool { _, ok := c1.Member("a1"); return !ok })
	mu.Lock()
	defer mu.Unlock()
	joined := strings.Join(events, " ")
	if !strings.Contains(joined, "join:a1") || !strings.Contains(joined, "leave:a1") {
		t.Fatalf("events %v", events)
	}
}

func TestMetaTooLargeDropsModelsToFit(t *testing.T) {
	var models []string
	for i := 0; i < 100; i++ {
		models = append(models, strings.Repeat("x", 20))
	}
	b, err := encodeMeta(Meta{Role: RoleAgent, Models: models})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 512 {
		t.Fatalf("meta of %d bytes", len(b))
	}
	if _, err := encodeMeta(Meta{Role: strings.Repeat("r", 600)}); err == nil {
		t.Fatal("oversize meta without models accepted")
	}
}

package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestNetlabCuts checks the partition tooling itself: a silent drop makes
// the sender time out, a refusal fails at once with EHOSTUNREACH, a one-way
// cut leaves the other direction working, a port taken down cuts the node
// off, the test process reaches nodes through the bridge, and healing
// restores every path.
func TestNetlabCuts(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: changes the host's network (bridge, namespaces)")
	}
	lab := NewNetlab(t)
	a, b := lab.AddNode("a"), lab.AddNode("b")
	tcpAt := func(nd *NetNode) string {
		var addr string
		if err := nd.Do(func() error {
			ln, err := net.Listen("tcp", nd.IP+":0")
			if err != nil {
				return err
			}
			t.Cleanup(func() { ln.Close() })
			addr = ln.Addr().String()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_, _ = io.WriteString(c, "ok")
					c.Close()
				}
			}()
			return nil
		}); err != nil {
			t.Fatalf("listen in %s: %v", nd.Name, err)
		}
		return addr
	}
	addrA, addrB := tcpAt(a), tcpAt(b)
	dial := func(addr string) error {
		c, err := net.DialTimeout("tcp", addr, 700*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		got, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if string(got) != "ok" {
			return fmt.Errorf("read %q", got)
		}
		return nil
	}
	dialFrom := func(nd *NetNode, addr string) error { return nd.Do(func() error { return dial(addr) }) }
	timedOut := func(err error) bool {
		var ne net.Error
		return errors.As(err, &ne) && ne.Timeout()
	}
	// mustReach retries each path for a few seconds: a port that just came
	// back up may take a moment to forward on a loaded machine.
	mustReach := func(when string) {
		t.Helper()
		for _, c := range []struct {
			from *NetNode
			addr string
		}{{a, addrB}, {b, addrA}, {nil, addrA}, {nil, addrB}} {
			deadline := time.Now().Add(5 * time.Second)
			for {
				var err error
				if c.from == nil {
					err = dial(c.addr)
				} else {
					err = dialFrom(c.from, c.addr)
				}
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: dial %s: %v", when, c.addr, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	mustReach("fresh lab")

	if err := lab.Cut(a, b, CutDrop); err != nil {
		t.Fatal(err)
	}
	if err := dialFrom(a, addrB); !timedOut(err) {
		t.Errorf("a->b dropped: dial got %v, want a timeout", err)
	}
	if err := dial(addrB); err != nil {
		t.Errorf("a->b dropped: the root namespace lost b too: %v", err)
	}
	if err := lab.Cut(a, b, CutDrop); err == nil {
		t.Errorf("cutting a cut link again succeeded")
	}
	if err := lab.Heal(a, b); err != nil {
		t.Fatal(err)
	}
	mustReach("after healing a drop")

	if err := lab.Cut(a, b, CutReject); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := dialFrom(a, addrB); !errors.Is(err, syscall.EHOSTUNREACH) || time.Since(start) > 2*time.Second {
		t.Errorf("a->b refused: dial got %v after %s, want EHOSTUNREACH at once", err, time.Since(start))
	}
	if err := lab.HealAll(); err != nil {
		t.Fatal(err)
	}
	mustReach("after healing a refusal")

	// One way: b's datagrams no longer reach a, a's still reach b.
	if err := lab.Cut(b, a, CutDrop); err != nil {
		t.Fatal(err)
	}
	udpAt := func(nd *NetNode) net.PacketConn {
		var pc net.PacketConn
		if err := nd.Do(func() (err error) { pc, err = net.ListenPacket("udp", nd.IP+":0"); return err }); err != nil {
			t.Fatalf("udp in %s: %v", nd.Name, err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc
	}
	ua, ub := udpAt(a), udpAt(b)
	got := func(from, to net.PacketConn) bool {
		if _, err := from.WriteTo([]byte("x"), to.LocalAddr()); err != nil {
			return false
		}
		_ = to.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 8)
		n, _, err := to.ReadFrom(buf)
		return err == nil && n == 1
	}
	if !got(ua, ub) {
		t.Errorf("b->a cut: a's datagram did not reach b")
	}
	if got(ub, ua) {
		t.Errorf("b->a cut: b's datagram reached a")
	}
	if lab.Cuts() != 1 {
		t.Errorf("cuts in place: %d, want 1", lab.Cuts())
	}
	if err := lab.HealAll(); err != nil {
		t.Fatal(err)
	}
	healed := false
	for try := 0; try < 10 && !healed; try++ {
		healed = got(ub, ua)
	}
	if !healed {
		t.Errorf("healed: b's datagram did not reach a")
	}

	if err := lab.SetLink(a, false); err != nil {
		t.Fatal(err)
	}
	if err := dial(addrA); err == nil {
		t.Errorf("a's port down: the root namespace still reaches a")
	}
	if err := dialFrom(a, addrB); err == nil {
		t.Errorf("a's port down: a still reaches b")
	}
	if err := lab.SetLink(a, true); err != nil {
		t.Fatal(err)
	}
	mustReach("after the port came back")
}

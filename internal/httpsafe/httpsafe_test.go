package httpsafe

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func serve(t *testing.T, h http.Handler, to Timeouts) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h, to)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// readAll is a handler that answers with the body's length or the error
// reading it.
var readAll = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusRequestTimeout)
		return
	}
	fmt.Fprint(w, len(b))
})

func TestStalledBodyIsCut(t *testing.T) {
	addr := serve(t, readAll, Timeouts{Header: time.Second, BodyIdle: 200 * time.Millisecond, Idle: time.Second})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers promise 10 bytes; 3 arrive, then nothing.
	fmt.Fprint(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	resp, _ := io.ReadAll(conn)
	if time.Since(start) > 3*time.Second {
		t.Fatalf("stalled body held the connection %v", time.Since(start))
	}
	if strings.Contains(string(resp), "200 OK") {
		t.Fatalf("stalled body accepted: %q", resp)
	}
}

func TestSlowHeadersAreCut(t *testing.T) {
	addr := serve(t, readAll, Timeouts{Header: 200 * time.Millisecond, BodyIdle: time.Second, Idle: time.Second})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST / HTTP/1.1\r\nHost: x\r\n")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	_, _ = io.ReadAll(conn)
	if time.Since(start) > 3*time.Second {
		t.Fatalf("slow headers held the connection %v", time.Since(start))
	}
}

func TestSteadyBodyLongerThanIdleSucceeds(t *testing.T) {
	addr := serve(t, readAll, Timeouts{Header: time.Second, BodyIdle: time.Second, Idle: time.Second})
	pr, pw := io.Pipe()
	go func() {
		// 15 chunks 100 ms apart: 1.5 s in all, never idle for 1 s (the
		// margin absorbs a loaded machine's scheduling stalls).
		for range 15 {
			time.Sleep(100 * time.Millisecond)
			_, _ = pw.Write([]byte("0123456789"))
		}
		pw.Close()
	}()
	resp, err := http.Post("http://"+addr+"/", "text/plain", pr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "150" {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
}

func TestLongAnswerAfterBodyIsNotCut(t *testing.T) {
	slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestTimeout)
			return
		}
		// Work past BodyIdle, as a long poll or a stream does.
		select {
		case <-time.After(600 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, len(b))
	})
	addr := serve(t, slow, Timeouts{Header: time.Second, BodyIdle: 200 * time.Millisecond, Idle: time.Second})
	resp, err := http.Post("http://"+addr+"/", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "5" {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
}

// TestUnreadStalledBodyIsCut: a handler that answers without reading the
// body (a 401) has the server drain the body before the answer goes out;
// a client that then sends nothing is cut off, not waited on for ever.
func TestUnreadStalledBodyIsCut(t *testing.T) {
	refuse := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no key", http.StatusUnauthorized)
	})
	addr := serve(t, refuse, Timeouts{Header: time.Second, BodyIdle: 200 * time.Millisecond, Idle: time.Second})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	resp, _ := io.ReadAll(conn)
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("unread stalled body held the connection %v", el)
	}
	if !strings.Contains(string(resp), "401") {
		t.Fatalf("answer %q, want the 401", resp)
	}
}

// TestBodyDeadlineBoundsATrickle: a body that keeps sending a byte within
// every idle bound is still cut at its BodyDeadline.
func TestBodyDeadlineBoundsATrickle(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !BodyDeadline(r, time.Now().Add(300*time.Millisecond)) {
			t.Error("BodyDeadline did not find the wrapped body")
		}
		readAll(w, r)
	})
	addr := serve(t, h, Timeouts{Header: time.Second, BodyIdle: time.Second, Idle: time.Second})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
	start := time.Now()
	for i := 0; i < 30 && time.Since(start) < 3*time.Second; i++ {
		if _, err := conn.Write([]byte("x")); err != nil {
			break // cut off
		}
		time.Sleep(100 * time.Millisecond) // a trickle: one byte per tenth of the idle bound
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, _ := io.ReadAll(conn)
	if strings.Contains(string(resp), "200 OK") {
		t.Fatalf("trickled body accepted: %q", resp)
	}
	if el := time.Since(start); el > 4*time.Second {
		t.Fatalf("trickle held the connection %v", el)
	}
}

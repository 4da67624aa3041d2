//go:build unix

package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/vbatch/vbatch/sim"
)

// TestMain lets the test binary stand in for vllm: with VBATCH_FAKE_VLLM=1
// it parses `serve MODEL --host H --port P`, takes the API key from
// VLLM_API_KEY as vLLM does, and serves the simulator there until SIGTERM.
// Two signals make it misbehave as a broken vLLM would: after SIGUSR1 it
// stops serving (closes its listener and connections) but lives on, after
// SIGUSR2 its /health answers 503.
//
// With VBATCH_TEST_KILL_OWNED=OWNER it runs killOwned(OWNER) instead and
// prints what it killed: the test of the leftover clean-up starts it with
// that owner's mark in its own environment, to see that it spares itself.
func TestMain(m *testing.M) {
	if os.Getenv("VBATCH_FAKE_VLLM") == "1" {
		os.Exit(fakeVLLM(os.Args[1:]))
	}
	if owner := os.Getenv("VBATCH_TEST_KILL_OWNED"); owner != "" {
		killed, err := killOwned(owner)
		fmt.Printf("survived; killed %d, err %v\n", len(killed), err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func fakeVLLM(args []string) int {
	if len(args) < 2 || args[0] != "serve" {
		fmt.Fprintln(os.Stderr, "usage: vllm serve MODEL [flags]")
		return 2
	}
	cfg := sim.Config{Models: []string{args[1]}, APIKey: os.Getenv("VLLM_API_KEY")}
	var host, port string
	for i := 2; i+1 < len(args); i += 2 {
		switch args[i] {
		case "--host":
			host = args[i+1]
		case "--port":
			port = args[i+1]
		case "--served-model-name":
			cfg.Models = []string{args[i+1]}
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	misbehave := make(chan os.Signal, 2)
	signal.Notify(misbehave, syscall.SIGUSR1, syscall.SIGUSR2)
	var sick atomic.Bool
	inner := sim.New(cfg).Handler()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" && sick.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		inner.ServeHTTP(w, r)
	})}
	ln, err := net.Listen("tcp", host+":"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("fake vllm serving %s on %s\n", cfg.Models[0], ln.Addr())
	go func() {
		for sig := range misbehave {
			if sig == syscall.SIGUSR2 {
				sick.Store(true)
				continue
			}
			_ = srv.Close()
		}
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	<-ctx.Done()
	return 0
}

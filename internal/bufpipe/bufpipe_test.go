package bufpipe

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

func TestCopiesEverythingInOrder(t *testing.T) {
	p := New(1 << 10)
	want := make([]byte, 1<<20)
	for i := range want {
		want[i] = byte(rand.IntN(256))
	}
	go func() {
		rest := want
		for len(rest) > 0 {
			n := min(len(rest), 1+rand.IntN(3000))
			if _, err := p.Write(rest[:n]); err != nil {
				t.Errorf("write: %v", err)
			}
			rest = rest[n:]
		}
		p.CloseWithError(nil)
	}()
	got, err := io.ReadAll(p)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(want))
	}
}

func TestWriterErrorReachesReaderAfterData(t *testing.T) {
	p := New(64)
	boom := errors.New("client went away")
	if _, err := p.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	p.CloseWithError(boom)
	got, err := io.ReadAll(p)
	if string(got) != "abc" || !errors.Is(err, boom) {
		t.Fatalf("got %q, %v; want abc and the writer's error", got, err)
	}
	if _, err := p.Write([]byte("x")); !errors.Is(err, ErrWriteClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

func TestWriteWaitsWhileFull(t *testing.T) {
	p := New(4)
	if _, err := p.Write([]byte("abcd")); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if _, err := p.Write([]byte("ef")); err != nil {
			t.Errorf("write: %v", err)
		}
	}()
	select {
	case <-done:
		t.Fatal("write into a full pipe returned before the reader made room")
	default:
	}
	buf := make([]byte, 4)
	if n, _ := p.Read(buf); string(buf[:n]) != "abcd" {
		t.Fatalf("read %q", buf[:n])
	}
	<-done
	if n, _ := p.Read(buf); string(buf[:n]) != "ef" {
		t.Fatalf("read %q", buf[:n])
	}
}

func TestOversizedWriteAcceptedWhenEmpty(t *testing.T) {
	p := New(2)
	if n, err := p.Write([]byte("abcdef")); n != 6 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
}

func TestClosedReaderDropsWritesAndUnblocksWriter(t *testing.T) {
	p := New(2)
	if _, err := p.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := p.Write([]byte("cd")); done <- err }()
	p.Close()
	if err := <-done; err != nil {
		t.Fatalf("blocked write after reader closed: %v", err)
	}
	if n, err := p.Write(make([]byte, 100)); n != 100 || err != nil {
		t.Fatalf("write after reader closed: %d, %v", n, err)
	}
	if _, err := p.Read(make([]byte, 1)); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("read after close: %v", err)
	}
}

func TestTryWriteNeverWaits(t *testing.T) {
	p := New(4)
	if !p.TryWrite([]byte("abc")) {
		t.Fatal("TryWrite into an empty pipe refused")
	}
	if p.TryWrite([]byte("de")) {
		t.Fatal("TryWrite past the buffer's room accepted")
	}
	if !p.TryWrite([]byte("d")) {
		t.Fatal("TryWrite that fits refused")
	}
	got, _ := io.ReadAll(io.LimitReader(p, 4))
	if string(got) != "abcd" {
		t.Fatalf("read %q", got)
	}
	if p.ReaderClosed() {
		t.Fatal("reader reported closed")
	}
	p.Close()
	if !p.ReaderClosed() || !p.TryWrite([]byte("xyz")) {
		t.Fatal("after Close: writes must be dropped and accepted")
	}
	p.CloseWithError(nil)
	if p.TryWrite([]byte("x")) {
		t.Fatal("TryWrite after CloseWithError accepted")
	}
}

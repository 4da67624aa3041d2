package blob

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

func TestRepair(t *testing.T) {
	c := newCluster(t, 3)
	missing := randBytes(2*BlockSize+7, 40) // never reached n0
	corrupt := randBytes(BlockSize+5, 41)   // on n0, then found corrupt
	present := randBytes(100, 42)           // intact on n0
	shaMissing := ingest(t, c[1].store, missing)
	shaCorrupt := ingest(t, c[2].store, corrupt)
	ingest(t, c[0].store, corrupt)
	shaPresent := ingest(t, c[0].store, present)
	shaNowhere := shaOf([]byte("referenced but lost everywhere"))

	flipByte(t, c[0].store.path(shaCorrupt), 10)
	if _, err := readAll(c[0].store, shaCorrupt); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read of corrupt copy: err = %v, want ErrCorrupt", err)
	}
	if !c[0].store.Quarantined(shaCorrupt) {
		t.Fatal("corrupt copy not quarantined")
	}

	gets := c[1].gets.Load() + c[2].gets.Load()
	refs := map[string]struct{}{shaMissing: {}, shaCorrupt: {}, shaPresent: {}, shaNowhere: {}}
	n, err := c[0].repl.Repair(context.Background(), refs)
	if n != 2 {
		t.Fatalf("Repair fetched %d blobs, want 2 (err %v)", n, err)
	}
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Repair err = %v, want ErrNotFound for the blob no peer has", err)
	}
	if got := c[1].gets.Load() + c[2].gets.Load() - gets; got > 2+4 {
		// Two blobs fetched; the lost one costs one GET per peer.
		t.Fatalf("Repair made %d GETs: it fetched blobs that were present", got)
	}
	for sha, want := range map[string][]byte{shaMissing: missing, shaCorrupt: corrupt, shaPresent: present} {
		data, err := readAll(c[0].store, sha)
		if err != nil || !bytes.Equal(data, want) {
			t.Fatalf("blob %s after repair: %v", sha[:8], err)
		}
	}
	if c[0].store.Quarantined(shaCorrupt) {
		t.Fatal("quarantined copy kept after a good one was fetched")
	}

	// A second pass has nothing left that it can do.
	n, err = c[0].repl.Repair(context.Background(), map[string]struct{}{shaMissing: {}, shaCorrupt: {}})
	if n != 0 || err != nil {
		t.Fatalf("second Repair = %d, %v; want 0, nil", n, err)
	}
}

func TestRepairStopsWithContext(t *testing.T) {
	c := newCluster(t, 2)
	sha := ingest(t, c[1].store, randBytes(10, 43))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n, err := c[0].repl.Repair(ctx, map[string]struct{}{sha: {}})
	if n != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("Repair with a done context = %d, %v", n, err)
	}
}

func TestGC(t *testing.T) {
	s := newStore(t)
	r := &Replicator{Store: s, Self: "n0"}
	keep := ingest(t, s, randBytes(BlockSize+1, 50)) // referenced, old
	old := ingest(t, s, randBytes(20, 51))           // unreferenced, old
	fresh := ingest(t, s, randBytes(30, 52))         // unreferenced, within grace
	reused := randBytes(40, 53)                      // unreferenced, old, then uploaded again
	shaReused := ingest(t, s, reused)
	lostCorrupt := ingest(t, s, randBytes(BlockSize, 54)) // unreferenced, quarantined
	for _, sha := range []string{keep, old, shaReused, lostCorrupt} {
		age(t, s, sha, 2*time.Hour)
	}
	ingest(t, s, reused) // a dedupe hit restarts the grace period
	flipByte(t, s.path(lostCorrupt), 0)
	if _, err := readAll(s, lostCorrupt); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}

	n, err := r.GC(map[string]struct{}{keep: {}}, time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("GC = %d, %v; want 1, nil", n, err)
	}
	for sha, want := range map[string]bool{keep: true, old: false, fresh: true, shaReused: true} {
		if s.Has(sha) != want {
			t.Fatalf("after GC Has(%s) = %v, want %v", sha[:8], !want, want)
		}
	}
	if s.Quarantined(lostCorrupt) {
		t.Fatal("GC kept the quarantined copy of an unreferenced blob")
	}
	if _, ok := s.Stat(old); ok {
		t.Fatal("Stat of collected blob reports it present")
	}
	if got := allFiles(t, s.Dir()); len(got) != 6 { // 3 blobs, 3 sidecars
		t.Fatalf("files after GC: %v", got)
	}

	// With no grace every unreferenced blob goes; referenced ones stay.
	n, err = r.GC(map[string]struct{}{keep: {}}, 0)
	if err != nil || n != 2 || !s.Has(keep) {
		t.Fatalf("GC with zero grace = %d, %v; keep present %v", n, err, s.Has(keep))
	}
	if rc, err := s.Open(keep); err != nil {
		t.Fatal(err)
	} else {
		_, err = io.Copy(io.Discard, rc)
		_ = rc.Close()
		if err != nil {
			t.Fatalf("referenced blob unreadable after GC: %v", err)
		}
	}
}

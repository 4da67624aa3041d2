//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDiskFull fills one coordinator's data dir (a 64 MiB tmpfs holding its
// raft log and blob store) and checks issue 5 item 6: an upload through the
// full node gets 507 (or 503) with an OpenAI error object, nothing committed
// is corrupted, the other two keep serving reads and writes, and the full
// node takes uploads again within seconds of the space being freed.
func TestDiskFull(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: starts real processes and mounts a tmpfs")
	}
	const full = 0 // index of the coordinator whose disk fills
	mnt := MountTmpfs(t, 64<<20)
	c := StartClusterDirs(t, 3, ClusterOptions{}, []string{filepath.Join(mnt, "c1")})
	others := c.Running(full)
	failed := true
	defer func() {
		if failed {
			t.Logf("coordinator logs:\n%s", c.Logs())
		}
	}()

	// Committed files, one uploaded through each coordinator, each read
	// back through every coordinator (so the full node holds every one
	// locally before its disk fills).
	want := map[string][]byte{}
	for i := range c.Coords {
		data := diskfullSeededBytes(256<<10+i*1000, uint64(i+1))
		want[diskfullUploadWithin(t, c, i, fmt.Sprintf("before-%d.bin", i), data, 10*time.Second)] = data
	}
	diskfullCheckFiles(t, c, []int{0, 1, 2}, want, "before the disk fills")

	leader := c.WaitLeader(30 * time.Second)
	t.Logf("leader before the fill: %s; full node: %s", c.Coords[leader].ID, c.Coords[full].ID)

	filler := filepath.Join(mnt, "filler")
	n, err := FillDisk(filler, 512<<10)
	if err != nil {
		t.Fatalf("fill the tmpfs: %v", err)
	}
	free, err := FreeBytes(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if free >= 1<<20 {
		t.Fatalf("after writing %d filler bytes %d bytes are still free, want < 1 MiB", n, free)
	}
	t.Logf("filler %d bytes; %d bytes left free on %s", n, free, mnt)

	// An upload larger than what is left, through the full node.
	big := diskfullSeededBytes(4<<20, 100)
	status, body, err := diskfullRawUpload(c.Coords[full].URL(), "too-big.bin", big)
	if err != nil {
		t.Fatalf("upload through the full node: %v", err)
	}
	t.Logf("upload through the full node: %d %s", status, strings.TrimSpace(string(body)))
	if status != http.StatusInsufficientStorage && status != http.StatusServiceUnavailable {
		t.Fatalf("upload through the full node: status %d, want 507 or 503: %s", status, body)
	}
	diskfullCheckErrorObject(t, body)
	if left := diskfullTempBlobs(t, mnt); len(left) > 0 {
		t.Errorf("the failed upload left temp files on the full disk: %v", left)
	}

	// Nothing committed is corrupted, through any node, the full one too.
	diskfullCheckFiles(t, c, []int{0, 1, 2}, want, "while the disk is full")

	// Now leave no byte free, so the full node's raft log and blob
	// replicas cannot grow either.
	if _, err := FillDisk(filepath.Join(mnt, "filler-rest"), 0); err != nil {
		t.Fatalf("fill the rest of the tmpfs: %v", err)
	}
	if free, err := FreeBytes(mnt); err != nil || free != 0 {
		t.Fatalf("tmpfs not full: %d bytes free (%v)", free, err)
	}

	// The other two keep quorum: writes and reads go on through them. If
	// the full node led and its raft log cannot grow, it steps down and
	// an election follows, hence the bounded retry.
	during := map[string][]byte{}
	for k := 0; k < 10; k++ {
		i := others[k%len(others)]
		data := diskfullSeededBytes(64<<10, uint64(200+k))
		id := diskfullUploadWithin(t, c, i, fmt.Sprintf("during-%d.bin", k), data, 20*time.Second)
		during[id] = data
		want[id] = data
	}
	t.Logf("%d uploads through the other coordinators accepted", len(during))
	diskfullCheckFiles(t, c, others, during, "written while one disk is full")
	diskfullRecordFullNode(t, c, full, during)

	// Space freed: the full node takes uploads again within seconds.
	for _, f := range []string{filler, filepath.Join(mnt, "filler-rest")} {
		if err := os.Remove(f); err != nil {
			t.Fatalf("remove filler: %v", err)
		}
	}
	freed := time.Now()
	after := diskfullSeededBytes(2<<20, 300)
	id := diskfullUploadWithin(t, c, full, "after.bin", after, 20*time.Second)
	t.Logf("full node accepted an upload %s after the space was freed", time.Since(freed).Round(time.Millisecond))
	want[id] = after
	diskfullCheckFiles(t, c, []int{0, 1, 2}, want, "after the space was freed")
	for _, i := range others {
		for _, line := range strings.Split(c.Coords[i].Log(), "\n") {
			if strings.Contains(line, `"status":50`) {
				t.Logf("%s answered a server error while %s was full: %.600s", c.Coords[i].ID, c.Coords[full].ID, line)
			}
		}
	}
	for _, co := range c.Coords {
		if strings.Contains(co.Log(), "panic:") {
			t.Errorf("%s panicked:\n%s", co.ID, tail(co.Log(), 40))
		}
	}
	failed = t.Failed()
}

// diskfullRecordFullNode logs what the full node does while the others write:
// its raft state, whether it serves the files written meanwhile, and the
// disk errors it logged. None of this is asserted: it may lag or refuse.
func diskfullRecordFullNode(t *testing.T, c *Cluster, full int, during map[string][]byte) {
	t.Helper()
	if s, err := c.StatusOf(full); err != nil {
		t.Logf("%s cluster status while full: %v", c.Coords[full].ID, err)
	} else {
		t.Logf("%s sees leader %q while full: %+v", c.Coords[full].ID, s.Leader, s.Servers)
	}
	// A file the full node has neither the metadata nor the bytes of may
	// wait on its stalled raft log until the client gives up: ask briefly.
	tried := 0
	for id := range during {
		if tried++; tried > 4 {
			break
		}
		req, err := http.NewRequest(http.MethodGet, c.Coords[full].URL()+"/v1/files/"+id+"/content", nil)
		if err != nil {
			t.Fatal(err)
		}
		status, got, err := diskfullDo(req, 3*time.Second)
		switch {
		case err != nil:
			t.Logf("%s read of %s while full: %v", c.Coords[full].ID, id, err)
		case status == http.StatusOK && !bytes.Equal(got, during[id]):
			t.Errorf("%s served %s while full with different bytes (%d, want %d)", c.Coords[full].ID, id, len(got), len(during[id]))
		case status == http.StatusOK:
			t.Logf("%s read of %s while full: 200, %d identical bytes", c.Coords[full].ID, id, len(got))
		default:
			t.Logf("%s read of %s while full: %d %.200s", c.Coords[full].ID, id, status, got)
		}
	}
	var disk []string
	for _, line := range strings.Split(c.Coords[full].Log(), "\n") {
		if strings.Contains(line, "no space") {
			disk = append(disk, line)
		}
	}
	if len(disk) > 6 {
		disk = append(disk[:3], disk[len(disk)-3:]...)
	}
	t.Logf("%s logged %d+ lines about the full disk, e.g.:\n%s", c.Coords[full].ID, len(disk), strings.Join(disk, "\n"))
}

// diskfullCheckFiles waits (bounded: default reads may lag the leader) until every
// file in want reads back byte-identical through each coordinator in via.
func diskfullCheckFiles(t *testing.T, c *Cluster, via []int, want map[string][]byte, when string) {
	t.Helper()
	for _, i := range via {
		for id, data := range want {
			deadline := time.Now().Add(15 * time.Second)
			for {
				status, got, err := diskfullRawGet(c.Coords[i].URL() + "/v1/files/" + id + "/content")
				if err == nil && status == http.StatusOK {
					if !bytes.Equal(got, data) {
						t.Fatalf("%s: file %s %s reads back %d bytes differing from the %d uploaded", c.Coords[i].ID, id, when, len(got), len(data))
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s does not serve file %s %s: %d %.300s %v", c.Coords[i].ID, id, when, status, got, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
}

// diskfullUploadWithin retries an upload through coordinator i until it is
// accepted or within passes, and returns the file id.
func diskfullUploadWithin(t *testing.T, c *Cluster, i int, name string, data []byte, within time.Duration) string {
	t.Helper()
	var id, last string
	start := time.Now()
	deadline := start.Add(within)
	for {
		status, body, err := diskfullRawUpload(c.Coords[i].URL(), name, data)
		if err == nil && status == http.StatusOK {
			var f struct {
				ID    string `json:"id"`
				Bytes int64  `json:"bytes"`
			}
			if err := json.Unmarshal(body, &f); err != nil || f.ID == "" || f.Bytes != int64(len(data)) {
				t.Fatalf("upload %s through %s: bad file object %s (%v)", name, c.Coords[i].ID, body, err)
			}
			id = f.ID
			if d := time.Since(start); d > time.Second {
				t.Logf("upload %s through %s took %s (last refusal: %s)", name, c.Coords[i].ID, d.Round(time.Millisecond), last)
			}
			return id
		}
		last = fmt.Sprintf("%d %s %v", status, strings.TrimSpace(string(body)), err)
		if time.Now().After(deadline) {
			t.Fatalf("upload %s through %s not accepted within %s; last answer: %s", name, c.Coords[i].ID, within, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// diskfullCheckErrorObject asserts body is an OpenAI error object with all four
// members and a message.
func diskfullCheckErrorObject(t *testing.T, body []byte) {
	t.Helper()
	var e struct {
		Error map[string]json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
		t.Fatalf("error body is not an OpenAI error object: %s (%v)", body, err)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := e.Error[k]; !ok {
			t.Errorf("error object lacks %q: %s", k, body)
		}
	}
	var msg string
	if err := json.Unmarshal(e.Error["message"], &msg); err != nil || msg == "" {
		t.Errorf("error object has no message: %s", body)
	}
}

// diskfullTempBlobs lists the blob store's temp files (blob-*, sum-*) under dir.
func diskfullTempBlobs(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n := d.Name(); !d.IsDir() && (strings.HasPrefix(n, "blob-") || strings.HasPrefix(n, "sum-")) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// diskfullRawUpload posts data as a user_data file to base's /v1/files and returns
// the status and body as answered.
func diskfullRawUpload(base, name string, data []byte) (int, []byte, error) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	if err := mw.WriteField("purpose", "user_data"); err != nil {
		return 0, nil, err
	}
	fw, err := mw.CreateFormFile("file", name)
	if err != nil {
		return 0, nil, err
	}
	if _, err := fw.Write(data); err != nil {
		return 0, nil, err
	}
	if err := mw.Close(); err != nil {
		return 0, nil, err
	}
	req, err := http.NewRequest(http.MethodPost, base+"/v1/files", &b)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	return diskfullDo(req, 15*time.Second)
}

// diskfullRawGet gets url and returns the status and body.
func diskfullRawGet(url string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	return diskfullDo(req, 15*time.Second)
}

// diskfullDo sends req, waiting at most timeout for the whole answer.
func diskfullDo(req *http.Request, timeout time.Duration) (int, []byte, error) {
	cl := &http.Client{Timeout: timeout}
	resp, err := cl.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// diskfullSeededBytes returns n deterministic pseudo-random bytes.
func diskfullSeededBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

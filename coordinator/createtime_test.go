package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vbatch/vbatch/fsm"
)

// TestCreateTimesIgnoreAProposersSkewedClock: a file and a batch created
// through a coordinator whose clock is ten minutes off the leader's are
// dated on the leader's time: created_at is the leader's, the file's
// expires_after and the batch's window count from it (so the leader's
// sweep does not delete the file ten minutes early, nor the batch's window
// end ten minutes short), and the batch does not start before it was
// created. (Before FSM level 10 the receiving coordinator's clock dated
// them.)
func TestCreateTimesIgnoreAProposersSkewedClock(t *testing.T) {
	const root = "test-root-key"
	nodes := startCluster(t, 3, func(c *Config) {
		c.RootKey = root
		if c.NodeID != "c1" {
			c.clockOffset = -10 * time.Minute
		}
	})
	leader := waitLeader(t, nodes)
	var skewed *Coordinator
	for _, c := range nodes {
		if c != leader && c.cfg.clockOffset != leader.cfg.clockOffset {
			skewed = c
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(method, path, contentType string, body io.Reader) map[string]any {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, "http://"+skewed.HTTPAddr()+path, body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+root)
		req.Header.Set("Content-Type", contentType)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s through %s: %d %s", method, path, skewed.cfg.NodeID, resp.StatusCode, b)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return m
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("purpose", "batch")
	_ = mw.WriteField("expires_after[anchor]", "created_at")
	_ = mw.WriteField("expires_after[seconds]", "3600")
	fw, _ := mw.CreateFormFile("file", "in.jsonl")
	_, _ = fw.Write([]byte(`{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}` + "\n"))
	_ = mw.Close()
	before := leader.Now().Unix()
	file := call(http.MethodPost, "/v1/files", mw.FormDataContentType(), &body)
	batch := call(http.MethodPost, "/v1/batches", "application/json",
		strings.NewReader(`{"input_file_id":"`+file["id"].(string)+`","endpoint":"/v1/chat/completions","completion_window":"24h"}`))
	after := leader.Now().Unix()
	onLeader := func(what string, at any) int64 {
		t.Helper()
		sec := int64(at.(float64))
		if sec < before || sec > after {
			t.Errorf("%s %d is not the leader's time (%d to %d; %s's clock is %v off)", what, sec, before, after, skewed.cfg.NodeID, skewed.cfg.clockOffset-leader.cfg.clockOffset)
		}
		return sec
	}
	fileCreated := onLeader("file created_at", file["created_at"])
	if file["expires_at"] != float64(fileCreated+3600) {
		t.Errorf("file created at %d with expires_after 3600 s expires at %v", fileCreated, file["expires_at"])
	}
	batchCreated := onLeader("batch created_at", batch["created_at"])
	if batch["expires_at"] != float64(batchCreated+24*3600) {
		t.Errorf("batch created at %d with a 24h window expires at %v", batchCreated, batch["expires_at"])
	}
	// The leader validates and starts the batch on its clock: it must
	// not start before it was created.
	id := batch["id"].(string)
	var created, started int64
	waitFor(t, 20*time.Second, "the batch to start", func() bool {
		leader.fsm.View(func(s *fsm.State) {
			if b := s.Batches[id]; b != nil {
				created, started = b.CreatedAt, b.InProgressAt
			}
		})
		return started != 0
	})
	if started < created {
		t.Errorf("batch in progress at %d, before it was created at %d", started, created)
	}
}

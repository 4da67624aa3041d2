package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// client returns an openai-go client for coordinator i.
func (c *Cluster) client(i int, key string) *openai.Client {
	opts := []option.RequestOption{
		option.WithBaseURL(c.Coords[i].URL() + "/v1/"),
		option.WithMaxRetries(0),
	}
	if key == "" {
		key = "unused"
	}
	opts = append(opts, option.WithAPIKey(key))
	cl := openai.NewClient(opts...)
	return &cl
}

// chatLines returns n valid chat-completion batch lines for model.
func chatLines(n int, model string) []byte {
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `{"custom_id":"req-%d","method":"POST","url":"/v1/chat/completions","body":{"model":%q,"messages":[{"role":"user","content":"question number %d"}],"max_tokens":8}}`+"\n", i, model, i)
	}
	return b.Bytes()
}

func upload(t testing.TB, cl *openai.Client, name string, data []byte) *openai.FileObject {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f, err := cl.Files.New(ctx, openai.FileNewParams{
		File:    openai.File(bytes.NewReader(data), name, "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatalf("upload %s: %v", name, err)
	}
	return f
}

func content(t testing.TB, cl *openai.Client, id string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := cl.Files.Content(ctx, id)
	if err != nil {
		t.Fatalf("content %s: %v", id, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read content %s: %v", id, err)
	}
	return b
}

func waitBatch(t testing.TB, cl *openai.Client, id string, timeout time.Duration, done func(*openai.Batch) bool) *openai.Batch {
	t.Helper()
	var last *openai.Batch
	WaitFor(t, timeout, "batch "+id+" to reach the expected state", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		b, err := cl.Batches.Get(ctx, id)
		if err != nil {
			return false
		}
		last = b
		return done(b)
	})
	return last
}

func statusIs(s openai.BatchStatus) func(*openai.Batch) bool {
	return func(b *openai.Batch) bool { return b.Status == s }
}

func lines(b []byte) []string {
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

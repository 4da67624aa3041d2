package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

// TestOpenAIGoClient drives the API with the official Go SDK: every object
// must decode with the fields the SDK expects, pagination must follow the
// SDK's cursor rules, and errors must surface as *openai.Error.
func TestOpenAIGoClient(t *testing.T) {
	e := rootEnv(t)
	ctx := context.Background()
	client := openai.NewClient(option.WithBaseURL(e.srv.URL+"/v1/"), option.WithAPIKey(testRoot), option.WithMaxRetries(0))

	content := batchLines(4)
	f, err := client.Files.New(ctx, openai.FileNewParams{
		File:    openai.File(strings.NewReader(content), "input.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatal(err)
	}
	if f.Object != "file" || f.Bytes != int64(len(content)) || f.Filename != "input.jsonl" || f.Purpose != "batch" ||
		f.Status != "processed" || !f.JSON.ExpiresAt.Valid() && f.JSON.ExpiresAt.Raw() != "null" {
		t.Fatalf("file %+v", f)
	}
	got, err := client.Files.Get(ctx, f.ID)
	if err != nil || got.ID != f.ID {
		t.Fatalf("get %v %v", got, err)
	}
	resp, err := client.Files.Content(ctx, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != content {
		t.Fatalf("content %q", body)
	}

	var ids []string
	for range 5 {
		b, err := client.Batches.New(ctx, openai.BatchNewParams{
			InputFileID:      f.ID,
			Endpoint:         openai.BatchNewParamsEndpointV1ChatCompletions,
			CompletionWindow: openai.BatchNewParamsCompletionWindow24h,
			Metadata:         shared.Metadata{"n": "1"},
		})
		if err != nil {
			t.Fatal(err)
		}
		if b.Status != openai.BatchStatusValidating || b.Metadata["n"] != "1" || b.ExpiresAt != b.CreatedAt+86400 || b.InputFileID != f.ID {
			t.Fatalf("batch %+v", b)
		}
		ids = append(ids, b.ID)
		e.b.advance(time.Second)
	}
	// Auto-paging two at a time walks every batch, newest first.
	iter := client.Batches.ListAutoPaging(ctx, openai.BatchListParams{Limit: openai.Int(2)})
	var listed []string
	for iter.Next() {
		listed = append(listed, iter.Current().ID)
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(listed) != 5 || listed[0] != ids[4] || listed[4] != ids[0] {
		t.Fatalf("listed %v, created %v", listed, ids)
	}
	fiter := client.Files.ListAutoPaging(ctx, openai.FileListParams{Limit: openai.Int(1), Order: openai.FileListParamsOrderAsc})
	n := 0
	for fiter.Next() {
		n++
	}
	if fiter.Err() != nil || n != 1 {
		t.Fatalf("files listed %d: %v", n, fiter.Err())
	}

	c, err := client.Batches.Cancel(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != openai.BatchStatusCancelling && c.Status != openai.BatchStatusCancelled {
		t.Fatalf("cancel status %s", c.Status)
	}

	_, err = client.Files.Get(ctx, "file-missing")
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || apiErr.Type != typeInvalidRequest ||
		apiErr.Message != "No such File object: file-missing" {
		t.Fatalf("missing file error %v", err)
	}
	_, err = client.Files.Delete(ctx, f.ID)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict {
		t.Fatalf("deleting a file in use: %v", err)
	}
	bad := openai.NewClient(option.WithBaseURL(e.srv.URL+"/v1/"), option.WithAPIKey("vb-nope"), option.WithMaxRetries(0))
	_, err = bad.Batches.Get(ctx, ids[0])
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized || apiErr.Code != codeInvalidAPIKey {
		t.Fatalf("bad key: %v", err)
	}
}

// TestConflictNotRetried checks that a 409 tells the SDKs not to retry:
// with the Go SDK's default retries, deleting a file a live batch uses and
// cancelling a batch that has ended each take exactly one request.
func TestConflictNotRetried(t *testing.T) {
	e := rootEnv(t)
	ctx := context.Background()
	requests := 0
	count := func(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
		requests++
		return next(req)
	}
	client := openai.NewClient(option.WithBaseURL(e.srv.URL+"/v1/"), option.WithAPIKey(testRoot),
		option.WithMaxRetries(2), option.WithMiddleware(count))
	f, err := client.Files.New(ctx, openai.FileNewParams{
		File:    openai.File(strings.NewReader(batchLines(2)), "input.jsonl", "application/jsonl"),
		Purpose: openai.FilePurposeBatch,
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := client.Batches.New(ctx, openai.BatchNewParams{
		InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h,
	})
	if err != nil {
		t.Fatal(err)
	}
	var apiErr *openai.Error
	requests = 0
	_, err = client.Files.Delete(ctx, f.ID)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict || requests != 1 {
		t.Fatalf("deleting a file in use: %d requests, %v", requests, err)
	}
	if got := apiErr.Response.Header.Get(shouldRetryHeader); got != "false" {
		t.Fatalf("409 answer has %s %q", shouldRetryHeader, got)
	}
	fail := &vbatchv1.FailBatch{BatchId: b.ID, Errors: []*vbatchv1.BatchError{{Code: "empty_file", Message: "empty"}}}
	if _, err := e.b.Apply(ctx, fail); err != nil {
		t.Fatal(err)
	}
	requests = 0
	_, err = client.Batches.Cancel(ctx, b.ID)
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusConflict || requests != 1 {
		t.Fatalf("cancelling an ended batch: %d requests, %v", requests, err)
	}
}

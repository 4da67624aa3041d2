package api

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// checkGolden compares v's indented JSON with testdata/name.
func checkGolden(t *testing.T, name string, v any) {
	t.Helper()
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs (rerun with -update after checking):\n%s", path, got)
	}
}

func TestGoldenFile(t *testing.T) {
	checkGolden(t, "file.golden.json", toFileObject(&vbatchv1.File{
		Id: "file-abc123", Project: "default", Purpose: "batch", Filename: "requests.jsonl", Bytes: 1234,
		Sha256: "ff", CreatedAt: 1700000000, Lines: 10, Parts: []*vbatchv1.BlobRef{{Sha256: "ff", Bytes: 1234}},
	}))
	checkGolden(t, "file_deleted.golden.json", fileDeleted{ID: "file-abc123", Object: "file", Deleted: true})
}

func TestGoldenBatch(t *testing.T) {
	checkGolden(t, "batch_validating.golden.json", toBatchObject(&vbatchv1.Batch{
		Id: "batch_abc123", Project: "default", InputFileId: "file-abc123", Endpoint: "/v1/chat/completions",
		CompletionWindow: "24h", Status: vbatchv1.BatchStatus_BATCH_STATUS_VALIDATING,
		CreatedAt: 1700000000, ExpiresAt: 1700086400, RequestCounts: &vbatchv1.RequestCounts{},
	}))
	checkGolden(t, "batch_completed.golden.json", toBatchObject(&vbatchv1.Batch{
		Id: "batch_abc123", Project: "default", InputFileId: "file-abc123", Endpoint: "/v1/chat/completions",
		CompletionWindow: "24h", Metadata: map[string]string{"team": "search", "run": "7"}, Model: "llama-3-8b",
		Status: vbatchv1.BatchStatus_BATCH_STATUS_COMPLETED, CreatedAt: 1700000000, InProgressAt: 1700000005,
		ExpiresAt: 1700086400, FinalizingAt: 1700000100, CompletedAt: 1700000110,
		RequestCounts: &vbatchv1.RequestCounts{Total: 10, Completed: 9, Failed: 1},
		OutputFileId:  "file-out", ErrorFileId: "file-err",
		Usage: &vbatchv1.Usage{InputTokens: 100, OutputTokens: 50, TotalTokens: 150, CachedTokens: 20, ReasoningTokens: 5},
	}))
	checkGolden(t, "batch_failed.golden.json", toBatchObject(&vbatchv1.Batch{
		Id: "batch_abc123", Project: "default", InputFileId: "file-abc123", Endpoint: "/v1/embeddings",
		CompletionWindow: "2h", Status: vbatchv1.BatchStatus_BATCH_STATUS_FAILED, CreatedAt: 1700000000,
		ExpiresAt: 1700007200, FailedAt: 1700000002, RequestCounts: &vbatchv1.RequestCounts{},
		Errors: []*vbatchv1.BatchError{
			{Code: "invalid_json_line", Message: "Line is not a valid JSON object.", Line: 3},
			{Code: "mismatched_model", Message: "The model differs.", Param: "body.model", Line: 4},
			{Code: "empty_file", Message: "The batch input file holds no requests."},
		},
	}))
}

func TestGoldenError(t *testing.T) {
	checkGolden(t, "error_not_found.golden.json", fileNotFound("file-nope").body())
	checkGolden(t, "error_unavailable.golden.json", toAPIError(ErrUnavailable).body())
}

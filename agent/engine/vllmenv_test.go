package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVLLMEnvWithholdsAgentSecrets starts a stand-in vllm that dumps its
// environment and checks that the agent's secrets did not reach it, while
// what vLLM needs did, and that the agent's own VLLM_API_KEY and
// CUDA_VISIBLE_DEVICES replace inherited ones.
func TestVLLMEnvWithholdsAgentSecrets(t *testing.T) {
	secrets := map[string]string{
		"VBATCH_ROOT_KEY":               "root-secret",
		"VBATCH_GOSSIP_KEY":             "gossip-secret",
		"SENTRY_DSN":                    "https://key@sentry.example/1",
		"PYROSCOPE_BASIC_AUTH_PASSWORD": "pyro-secret",
	}
	kept := map[string]string{
		"HF_TOKEN":           "hf-token",
		"CUDA_HOME":          "/usr/local/cuda",
		"VLLM_LOGGING_LEVEL": "DEBUG",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	for k, v := range kept {
		t.Setenv(k, v)
	}
	t.Setenv("VLLM_API_KEY", "inherited-key")
	t.Setenv("CUDA_VISIBLE_DEVICES", "7")

	dump := filepath.Join(t.TempDir(), "env")
	e := fastVLLM(VLLMConfig{
		Bin:           fakeVLLMScript(t, "env > '"+dump+"'"),
		Model:         "org/fake",
		Args:          []string{"--served-model-name", "fake"},
		GPUs:          "0,1",
		Owner:         "owner-env-test",
		Logger:        discardLogger(),
		HealthTimeout: 30 * time.Second,
		StopGrace:     10 * time.Second,
	})
	ctx := context.Background()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = e.Stop(ctx) }()
	raw, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string][]string{}
	for _, kv := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = append(env[k], v)
		}
	}
	for k := range secrets {
		if v, ok := env[k]; ok {
			t.Errorf("vllm's environment holds %s=%v", k, v)
		}
	}
	for k, want := range kept {
		if got := env[k]; len(got) != 1 || got[0] != want {
			t.Errorf("vllm's %s = %v, want %q", k, got, want)
		}
	}
	for _, k := range []string{"PATH", "HOME"} {
		if _, ok := env[k]; !ok && os.Getenv(k) != "" {
			t.Errorf("vllm's environment lacks %s", k)
		}
	}
	if got := env["VLLM_API_KEY"]; len(got) != 1 || got[0] == "inherited-key" || got[0] == "" {
		t.Errorf("vllm's VLLM_API_KEY = %v, want the agent's one key", got)
	}
	if got := env["CUDA_VISIBLE_DEVICES"]; len(got) != 1 || got[0] != "0,1" {
		t.Errorf("vllm's CUDA_VISIBLE_DEVICES = %v, want [0,1]", got)
	}
	if got := env[ownerEnv]; len(got) != 1 || got[0] != "owner-env-test" {
		t.Errorf("vllm's %s = %v, want [owner-env-test]", ownerEnv, got)
	}
	// The child answers with the agent's key, not the inherited one.
	if status, body, err := e.Do(ctx, "/v1/chat/completions", fmt.Appendf(nil, chatReq, "fake")); err != nil || status != 200 {
		t.Fatalf("Do: %d %s %v", status, body, err)
	}
}

func TestVLLMEnvBuilder(t *testing.T) {
	parent := []string{"PATH=/bin", "VBATCH_ROOT_KEY=x", "SENTRY_DSN=y", "PYROSCOPE_SERVER_ADDRESS=z",
		"VLLM_API_KEY=old", "VLLM_USE_V1=1", "HF_HOME=/h", "VBATCHX=kept"}
	got := vllmEnv(parent, "VLLM_API_KEY=new")
	want := []string{"PATH=/bin", "VLLM_USE_V1=1", "HF_HOME=/h", "VBATCHX=kept", "VLLM_API_KEY=new"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("vllmEnv = %q, want %q", got, want)
	}
}

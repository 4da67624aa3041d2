package cli

import (
	"context"
	"strings"
	"testing"
)

const emptyList = `{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}`

func TestEnvFallbacks(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		args     []string
		wantAuth string
		// addrVia names the variable that gets the fake server's address;
		// decoy variables get an address nothing listens on.
		addrVia string
	}{
		{
			name:     "VBATCH variables",
			env:      map[string]string{"VBATCH_API_KEY": "sk-vb", "OPENAI_API_KEY": "sk-oa", "OPENAI_BASE_URL": "decoy"},
			addrVia:  "VBATCH_ADDR",
			wantAuth: "Bearer sk-vb",
		},
		{
			name:     "OPENAI variables, base URL ending in /v1",
			env:      map[string]string{"OPENAI_API_KEY": "sk-oa"},
			addrVia:  "OPENAI_BASE_URL",
			wantAuth: "Bearer sk-oa",
		},
		{
			name:     "flags win over the environment",
			env:      map[string]string{"VBATCH_API_KEY": "sk-vb", "VBATCH_ADDR": "decoy"},
			addrVia:  "--addr",
			args:     []string{"--api-key", "sk-flag"},
			wantAuth: "Bearer sk-flag",
		},
		{
			name:    "no key at all",
			addrVia: "VBATCH_ADDR",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t)
			f.reply("GET /v1/files", 200, emptyList)
			for _, name := range []string{"VBATCH_ADDR", "VBATCH_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"} {
				v := tc.env[name]
				if v == "decoy" {
					v = "http://127.0.0.1:1"
				}
				t.Setenv(name, v)
			}
			args := tc.args
			switch tc.addrVia {
			case "--addr":
				args = append(args, "--addr", f.srv.URL)
			case "OPENAI_BASE_URL":
				t.Setenv(tc.addrVia, f.srv.URL+"/v1")
			default:
				t.Setenv(tc.addrVia, f.srv.URL)
			}
			r := runEnv(t, context.Background(), append(args, "files", "list")...).ok(t)
			if got := f.only().Auth; got != tc.wantAuth {
				t.Errorf("Authorization = %q, want %q", got, tc.wantAuth)
			}
			// Taking the address from OPENAI_BASE_URL is said on stderr.
			if warned := strings.Contains(r.stderr, "using OPENAI_BASE_URL"); warned != (tc.addrVia == "OPENAI_BASE_URL") {
				t.Errorf("stderr %q: warning about OPENAI_BASE_URL %v, want %v", r.stderr, warned, tc.addrVia == "OPENAI_BASE_URL")
			}
		})
	}
}

func TestHelpHidesKeyFromEnvironment(t *testing.T) {
	t.Setenv("VBATCH_API_KEY", "sk-secret-from-env")
	r := runEnv(t, context.Background(), "files", "list", "--help").ok(t)
	if strings.Contains(r.stdout+r.stderr, "sk-secret") {
		t.Errorf("help shows the API key:\n%s", r.stdout)
	}
}

func TestServerErrorIsPrinted(t *testing.T) {
	f := newFakeServer(t)
	f.reply("GET /v1/files/{id}", 404, openAIError("No such File object: file-x", "invalid_request_error", "not_found"))
	for _, output := range []string{"table", "json"} {
		r := f.run("-o", output, "files", "get", "file-x")
		if r.code != 1 {
			t.Errorf("-o %s: exit %d, want 1", output, r.code)
		}
		if r.stderr != "Error: No such File object: file-x (HTTP 404, not_found)\n" {
			t.Errorf("-o %s: stderr = %q", output, r.stderr)
		}
		if r.stdout != "" {
			t.Errorf("-o %s: stdout = %q, want nothing", output, r.stdout)
		}
	}
}

func TestUnreachableServer(t *testing.T) {
	r := runEnv(t, context.Background(), "--addr", "127.0.0.1:1", "cluster", "status")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "Error: ") || !strings.Contains(r.stderr, "127.0.0.1:1") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-o", "yaml", "files", "list"}, "Error: -o must be table or json, not \"yaml\"\nRun 'vbctl --help' for usage.\n"},
		{[]string{"files", "get"}, "Error: accepts 1 arg(s), received 0\nRun 'vbctl files get --help' for usage.\n"},
		{[]string{"files", "frob"}, "Error: unknown command \"frob\" for \"vbctl files\"\nRun 'vbctl files --help' for usage.\n"},
		{[]string{"files", "list", "--frob"}, "Error: unknown flag: --frob\nRun 'vbctl files list --help' for usage.\n"},
		{[]string{"batches", "create"}, "Error: required flag(s) \"input-file\" not set\n"},
		{[]string{"batches", "create", "--input-file", "f", "--metadata", "novalue"},
			"Error: --metadata \"novalue\": want key=value\nRun 'vbctl batches create --help' for usage.\n"},
		{[]string{"frob"}, "Error: unknown command \"frob\" for \"vbctl\"\n"},
	} {
		// Nothing listens at the address: a usage error must stop vbctl
		// before it sends anything.
		r := runEnv(t, context.Background(), append([]string{"--addr", "127.0.0.1:1"}, tc.args...)...)
		if r.code != 1 || r.stderr != tc.want {
			t.Errorf("%v: exit %d, stderr %q; want 1, %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

func TestGroupAloneShowsHelp(t *testing.T) {
	r := runEnv(t, context.Background(), "batches").ok(t)
	for _, sub := range []string{"create", "list", "get", "cancel", "submit", "watch"} {
		if !strings.Contains(r.stdout, "\n  "+sub+" ") {
			t.Errorf("help lacks %s:\n%s", sub, r.stdout)
		}
	}
}

package deploy

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestAlloyShipsFromEveryHost checks what running the one Alloy file on
// every coordinator and GPU host needs: the Loki URL comes from LOKI_URL
// (the compose stack's Loki when unset, which the compose file passes
// through), and every line carries a host label, the journal's hostname for
// journal lines.
func TestAlloyShipsFromEveryHost(t *testing.T) {
	raw, err := os.ReadFile("alloy/config.alloy")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	if !regexp.MustCompile(`url\s*=\s*coalesce\(sys\.env\("LOKI_URL"\),\s*"http://loki:3100/loki/api/v1/push"\)`).MatchString(text) {
		t.Error(`the Loki URL is not coalesce(sys.env("LOKI_URL"), the stack's Loki)`)
	}
	if !regexp.MustCompile(`external_labels\s*=\s*\{\s*host\s*=\s*coalesce\(sys\.env\("VBATCH_LOG_HOST"\),\s*constants\.hostname\)\s*\}`).MatchString(text) {
		t.Error("lines carry no host label")
	}
	if !regexp.MustCompile(`(?s)source_labels\s*=\s*\["__journal__hostname"\]\s*target_label\s*=\s*"host"`).MatchString(text) {
		t.Error("journal lines do not take the journal's hostname as host")
	}
	compose, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{"LOKI_URL: ${LOKI_URL:-http://loki:3100/loki/api/v1/push}", "VBATCH_LOG_HOST: ${VBATCH_LOG_HOST:-"} {
		if !strings.Contains(string(compose), env) {
			t.Errorf("the alloy service does not set %s", env)
		}
	}
}

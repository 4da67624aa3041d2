package validate

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// body builds a request line whose body carries extra (a JSON fragment of
// members, without braces).
func body(id, extra string) string {
	return fmt.Sprintf(`{"custom_id":%q,"method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[],%s}}`, id, extra)
}

func TestValidateCaps(t *testing.T) {
	capped := Options{MaxTokens: 1000, MaxN: 4}
	cases := []struct {
		name string
		in   string
		opts Options
		want []wantErr
	}{
		{"under every cap", body("a", `"max_tokens":1000,"n":4,"best_of":4,"min_tokens":10`) + "\n", capped, nil},
		{"null fields fit", body("a", `"max_tokens":null,"n":null`) + "\n", capped, nil},
		{"no caps, no limit", body("a", `"max_tokens":1e9,"n":"many"`) + "\n", Options{}, nil},
		{"max_tokens over", body("a", `"max_tokens":1000`) + "\n" + body("b", `"max_tokens":1001`) + "\n", capped,
			[]wantErr{{CodeExceededMaxTokens, "body.max_tokens", 2}}},
		{"max_completion_tokens over", body("a", `"max_completion_tokens":5000`), capped,
			[]wantErr{{CodeExceededMaxTokens, "body.max_completion_tokens", 1}}},
		{"max_output_tokens over", body("a", `"max_output_tokens":1000.5`), capped,
			[]wantErr{{CodeExceededMaxTokens, "body.max_output_tokens", 1}}},
		{"min_tokens over", body("a", `"min_tokens":2000`), capped,
			[]wantErr{{CodeExceededMaxTokens, "body.min_tokens", 1}}},
		{"exponent over", body("a", `"max_tokens":1e4`), capped,
			[]wantErr{{CodeExceededMaxTokens, "body.max_tokens", 1}}},
		{"huge number", body("a", `"max_tokens":1e999`), capped,
			[]wantErr{{CodeExceededMaxTokens, "body.max_tokens", 1}}},
		{"string tokens", body("a", `"max_tokens":"100000"`), capped,
			[]wantErr{{CodeExceededMaxTokens, "body.max_tokens", 1}}},
		{"n over", body("a", `"n":5`), capped, []wantErr{{CodeExceededMaxN, "body.n", 1}}},
		{"best_of over", body("a", `"best_of":50`), capped, []wantErr{{CodeExceededMaxN, "body.best_of", 1}}},
		{"n array", body("a", `"n":[1]`), capped, []wantErr{{CodeExceededMaxN, "body.n", 1}}},
		{"only the tokens cap set", body("a", `"n":500,"max_tokens":5`), Options{MaxTokens: 10}, nil},
		{"each line reports", body("a", `"n":9`) + "\n" + body("b", `"max_tokens":9999`) + "\n" + body("c", `"n":1`) + "\n", capped,
			[]wantErr{{CodeExceededMaxN, "body.n", 1}, {CodeExceededMaxTokens, "body.max_tokens", 2}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Validate(strings.NewReader(tc.in), ep, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := errsOf(res); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("errors = %v, want %v", got, tc.want)
			}
			for _, e := range res.Errors {
				if e.Message == "" {
					t.Errorf("error %s has no message", e.Code)
				}
			}
		})
	}
}

func TestCheckCapsMessage(t *testing.T) {
	var b map[string]json.RawMessage
	if err := json.Unmarshal([]byte(`{"model":"m","max_tokens": 4097 }`), &b); err != nil {
		t.Fatal(err)
	}
	ce := CheckCaps(b, 4096, 0)
	if ce == nil || ce.Field != "max_tokens" || ce.Code != CodeExceededMaxTokens ||
		ce.Message != "max_tokens is too large: 4097. This deployment allows at most 4096 tokens per request." {
		t.Fatalf("%+v", ce)
	}
	if ce := CheckCaps(b, 4097, 1); ce != nil {
		t.Fatalf("fits, got %+v", ce)
	}
	// Names are exact: another spelling is not a field the engine reads.
	var other map[string]json.RawMessage
	if err := json.Unmarshal([]byte(`{"Max_Tokens":99999,"N":99}`), &other); err != nil {
		t.Fatal(err)
	}
	if ce := CheckCaps(other, 10, 1); ce != nil {
		t.Fatalf("%+v", ce)
	}
}

package api

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// refCount is the byte-at-a-time definition of what uploadReader counts.
func refCount(data []byte, maxLine int64) (newlines, nonBlank, longLine int64) {
	var lineLen int64
	content := false
	for _, c := range data {
		if c == '\n' {
			newlines++
			if content {
				nonBlank++
			}
			content, lineLen = false, 0
			continue
		}
		lineLen++
		if maxLine > 0 && lineLen > maxLine && longLine == 0 {
			longLine = newlines + 1
		}
		if c != ' ' && c != '\t' && c != '\r' {
			content = true
		}
	}
	if content {
		nonBlank++
	}
	return newlines, nonBlank, longLine
}

// TestUploadReaderCounts compares the counts over random content, read in
// random pieces, with the byte-at-a-time definition.
func TestUploadReaderCounts(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab{} \t\r\n\n")
	for trial := range 500 {
		data := make([]byte, rng.IntN(300))
		for i := range data {
			data[i] = alphabet[rng.IntN(len(alphabet))]
		}
		maxLine := int64(rng.IntN(12))
		u := &uploadReader{r: &choppyReader{r: bytes.NewReader(data), rng: rng}, max: 1 << 20, maxLine: maxLine}
		if _, err := io.Copy(io.Discard, u); err != nil {
			t.Fatal(err)
		}
		nl, nb, long := refCount(data, maxLine)
		if u.newlines != nl || u.nonBlank() != nb || u.longLine != long || u.n != int64(len(data)) {
			t.Fatalf("trial %d %q (max line %d): newlines %d nonBlank %d longLine %d; want %d %d %d",
				trial, data, maxLine, u.newlines, u.nonBlank(), u.longLine, nl, nb, long)
		}
	}
}

// choppyReader returns what r holds in random small pieces.
type choppyReader struct {
	r   io.Reader
	rng *rand.Rand
}

func (c *choppyReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1+c.rng.IntN(min(len(p), 17))]
	}
	return c.r.Read(p)
}

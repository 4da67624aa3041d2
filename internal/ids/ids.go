// Package ids makes the random identifiers of OpenAI-style objects.
package ids

import (
	"crypto/rand"
	"math/big"
)

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// Random returns n random base62 characters from crypto/rand.
func Random(n int) string {
	b := make([]byte, n)
	max := big.NewInt(int64(len(alphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic("crypto/rand failed: " + err.Error())
		}
		b[i] = alphabet[v.Int64()]
	}
	return string(b)
}

// New returns prefix followed by 24 random base62 characters, as OpenAI
// ids look ("file-…", "batch_…").
func New(prefix string) string { return prefix + Random(24) }

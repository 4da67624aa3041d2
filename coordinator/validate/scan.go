package validate

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ScanCustomIDs reads a validated batch input file and calls fn with the
// 0-based line number and custom_id of every line in [from, to). It stops
// reading once line to is reached. A line in range that is not a request
// with a custom_id is an error: the file was validated before it ran.
// maxLine is the line size the file was validated with (0: the default).
func ScanCustomIDs(r io.Reader, from, to int64, maxLine int, fn func(line int64, customID string)) error {
	if maxLine <= 0 {
		maxLine = DefaultMaxLineBytes
	}
	lr := newLineReader(r, maxLine)
	var ls lineScan
	for i := int64(0); i < to; i++ {
		l, err := lr.next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("scan custom ids: file ends at line %d, before line %d", i, to)
		}
		if err != nil {
			return fmt.Errorf("scan custom ids: %w", err)
		}
		if i < from {
			continue
		}
		if l.tooLong {
			return fmt.Errorf("scan custom ids: line %d is longer than %d bytes", i+1, maxLine)
		}
		if !ls.scan(l.data) {
			return fmt.Errorf("scan custom ids: line %d is not a JSON object", i+1)
		}
		id, code := stringValue(ls.top[topCustomID])
		if code != fieldOK {
			return fmt.Errorf("scan custom ids: line %d has no custom_id", i+1)
		}
		fn(i, string(id))
	}
	return nil
}

// expiredMessage is OpenAI's message for a request the batch never ran.
const expiredMessage = "This request could not be executed before the completion window expired."

// ExpiredLine is the error-file line OpenAI writes for a request that had
// not run when its batch expired, newline included. seq numbers the lines
// of one batch; the request id is derived from batchID and seq, so the same
// arguments always give the same bytes.
func ExpiredLine(batchID, customID string, seq int) []byte {
	sum := sha256.Sum256([]byte(batchID + "\x00" + strconv.Itoa(seq)))
	type lineError struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	v := struct {
		ID       string          `json:"id"`
		CustomID string          `json:"custom_id"`
		Response json.RawMessage `json:"response"`
		Error    lineError       `json:"error"`
	}{
		ID:       "batch_req_" + hex.EncodeToString(sum[:16]),
		CustomID: customID,
		Response: json.RawMessage("null"),
		Error:    lineError{Code: "batch_expired", Message: expiredMessage},
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Every field is a string or a fixed literal: encoding cannot fail.
		panic(fmt.Sprintf("encode expired line: %v", err))
	}
	return buf.Bytes()
}

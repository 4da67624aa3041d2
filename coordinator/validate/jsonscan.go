package validate

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"unicode/utf8"
)

// This file holds the single-pass scanner that reads a request line. It
// accepts exactly the lines that encoding/json decodes into a
// map[string]json.RawMessage (after bytes.TrimSpace, starting with '{')
// and finds the members the checks read, without decoding anything else
// and without allocating:
//
//   - the grammar is encoding/json's: invalid UTF-8 inside strings is
//     accepted, and at most maxDepth arrays and objects may be open at once;
//   - member names are compared after unescaping ("custom\u005fid" is
//     custom_id), and of members with the same name the last one counts;
//   - strings are skipped eight bytes at a time, stopping only at '"', '\\'
//     or a control character.
//
// The scanner never recurses, so a deeply nested line cannot exhaust the
// stack; a bit stack remembers whether each open container is an object.

// maxDepth is how many arrays and objects encoding/json lets one value nest
// (its scanner's maxNestingDepth).
const maxDepth = 10000

// Top-level members of a request line the checks read, indexes of
// lineScan.top.
const (
	topCustomID = iota
	topMethod
	topURL
	topBody
	numTop
)

// Members of a request body the checks read, indexes of lineScan.body: the
// model, stream, then the capped fields in the order of capFields.
const (
	bodyModel = iota
	bodyStream
	bodyCaps
	numBody = bodyCaps + numCapFields
)

// lineScan is what scan found in one request line. A member value is the
// raw JSON text of the value, without surrounding whitespace, or nil when
// the member is absent; for an array or object only its first byte is kept,
// since the checks need only its kind. The slices alias the line.
type lineScan struct {
	top [numTop][]byte
	// body holds the members of the last body member when that is an
	// object (top[topBody][0] == '{'); otherwise it is all nil.
	body [numBody][]byte
	// inBody reports that the container open at depth 2 is that body.
	inBody bool
	// kinds is a bit stack of the open containers: bit d is set when the
	// container at depth d (0 for the line's own object) is an object.
	kinds [(maxDepth + 63) / 64]uint64
}

// bodyObject reports whether the line's body member is a JSON object.
func (s *lineScan) bodyObject() bool {
	b := s.top[topBody]
	return len(b) > 0 && b[0] == '{'
}

// scan reads one line and reports whether it is a JSON object in the sense
// of encoding/json (see the file comment); s then holds its members.
func (s *lineScan) scan(line []byte) bool {
	s.top = [numTop][]byte{}
	s.body = [numBody][]byte{}
	s.inBody = false
	data := bytes.TrimSpace(line)
	if len(data) == 0 || data[0] != '{' {
		return false
	}
	n := len(data)
	depth := 0      // containers open
	var dst *[]byte // where the next value is recorded, nil: nowhere
	i := 0
values:
	for {
		// A value starts at i, after optional whitespace.
		i = skipSpace(data, i)
		if i >= n {
			return false
		}
		c := data[i]
		switch {
		case c == '{' || c == '[':
			if depth == maxDepth {
				return false
			}
			if dst != nil {
				*dst = data[i : i+1]
				if depth == 1 {
					s.inBody = dst == &s.top[topBody] && c == '{'
				}
				dst = nil
			}
			s.push(depth, c == '{')
			depth++
			i = skipSpace(data, i+1)
			if i < n && data[i] == c+2 { // '{'+2 is '}', '['+2 is ']'
				i++
				depth--
				if depth == 1 {
					s.inBody = false
				}
				break // an empty container: the value ends here
			}
			if c == '{' {
				var ok bool
				if i, dst, ok = s.member(data, i, depth); !ok {
					return false
				}
			}
			continue values
		case c == '"':
			end, _, ok := skipString(data, i+1)
			if !ok {
				return false
			}
			if dst != nil {
				*dst, dst = data[i:end], nil
			}
			i = end
		case c == '-' || c >= '0' && c <= '9':
			end, ok := skipNumber(data, i)
			if !ok {
				return false
			}
			if dst != nil {
				*dst, dst = data[i:end], nil
			}
			i = end
		default:
			end := literalEnd(data, i)
			if end < 0 {
				return false
			}
			if dst != nil {
				*dst, dst = data[i:end], nil
			}
			i = end
		}
		// After a value: closing brackets, then a comma before the next
		// value, or the end of the line.
		for {
			i = skipSpace(data, i)
			if depth == 0 {
				return i == n
			}
			if i >= n {
				return false
			}
			obj := s.isObject(depth - 1)
			switch c := data[i]; {
			case c == ',':
				i++
				if obj {
					var ok bool
					if i, dst, ok = s.member(data, i, depth); !ok {
						return false
					}
				}
				continue values
			case obj && c == '}' || !obj && c == ']':
				i++
				depth--
				if depth == 1 {
					s.inBody = false
				}
			default:
				return false
			}
		}
	}
}

// member reads a member name and its colon at i, inside an object at the
// given depth, and returns where its value starts and where that value is
// to be recorded (nil when the checks do not read it).
func (s *lineScan) member(data []byte, i, depth int) (int, *[]byte, bool) {
	i = skipSpace(data, i)
	if i >= len(data) || data[i] != '"' {
		return 0, nil, false
	}
	end, esc, ok := skipString(data, i+1)
	if !ok {
		return 0, nil, false
	}
	name := data[i+1 : end-1]
	i = skipSpace(data, end)
	if i >= len(data) || data[i] != ':' {
		return 0, nil, false
	}
	i++
	if depth != 1 && !(depth == 2 && s.inBody) {
		return i, nil, true
	}
	var buf [maxNameLen]byte
	if esc {
		if name, ok = unescapeName(name, &buf); !ok {
			return i, nil, true
		}
	}
	if depth == 1 {
		k := topIndex(name)
		if k < 0 {
			return i, nil, true
		}
		if k == topBody {
			// A later body replaces an earlier one, members and all.
			s.body = [numBody][]byte{}
		}
		return i, &s.top[k], true
	}
	if k := bodyIndex(name); k >= 0 {
		return i, &s.body[k], true
	}
	return i, nil, true
}

// maxNameLen bounds the member names the checks read
// ("max_completion_tokens" is the longest).
const maxNameLen = 24

func topIndex(name []byte) int {
	switch string(name) {
	case "custom_id":
		return topCustomID
	case "method":
		return topMethod
	case "url":
		return topURL
	case "body":
		return topBody
	}
	return -1
}

func bodyIndex(name []byte) int {
	switch string(name) {
	case "model":
		return bodyModel
	case "stream":
		return bodyStream
	}
	for k, f := range capFields {
		if string(name) == f {
			return bodyCaps + k
		}
	}
	return -1
}

// unescapeName decodes the escapes of a member name (already checked to be
// well formed) into buf. It reports false when the decoded name cannot be
// one the checks read: longer than buf or not ASCII.
func unescapeName(name []byte, buf *[maxNameLen]byte) ([]byte, bool) {
	w := 0
	for r := 0; r < len(name); {
		if w == len(buf) {
			return nil, false
		}
		c := name[r]
		switch {
		case c >= utf8.RuneSelf:
			return nil, false
		case c != '\\':
			r++
		default:
			switch c = name[r+1]; c {
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			case 'u':
				u := hexVal(name[r+2])<<12 | hexVal(name[r+3])<<8 | hexVal(name[r+4])<<4 | hexVal(name[r+5])
				if u >= utf8.RuneSelf {
					return nil, false
				}
				c = byte(u)
				r += 4
			}
			r += 2
		}
		buf[w] = c
		w++
	}
	return buf[:w], true
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func (s *lineScan) push(depth int, object bool) {
	if object {
		s.kinds[depth>>6] |= 1 << (depth & 63)
	} else {
		s.kinds[depth>>6] &^= 1 << (depth & 63)
	}
}

func (s *lineScan) isObject(depth int) bool {
	return s.kinds[depth>>6]&(1<<(depth&63)) != 0
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON whitespace.
func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString reads the rest of a string whose opening quote is just before
// i, and returns the index just past its closing quote and whether it holds
// any escape. It reports false for a string that is not valid JSON.
func skipString(data []byte, i int) (end int, esc, ok bool) {
	for {
		i = skipPlain(data, i)
		if i >= len(data) {
			return 0, esc, false
		}
		switch data[i] {
		case '"':
			return i + 1, esc, true
		case '\\':
			esc = true
			if i+1 >= len(data) {
				return 0, esc, false
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) || hexVal(data[i+2])|hexVal(data[i+3])|hexVal(data[i+4])|hexVal(data[i+5]) < 0 {
					return 0, esc, false
				}
				i += 6
			default:
				return 0, esc, false
			}
		default: // a control character
			return 0, esc, false
		}
	}
}

// Bytes repeated in every byte of a word, for skipPlain.
const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// skipPlain returns the index of the first '"', '\\' or control character
// (< 0x20) at or after i, or len(data). It tests eight bytes at a time: for
// each of the three tests, (x - ones*k) & ^x & highs sets the high bit of
// every byte of x below k, and none below the first such byte, so the
// lowest bit set marks the first byte that stops a string.
func skipPlain(data []byte, i int) int {
	for ; i+8 <= len(data); i += 8 {
		x := binary.LittleEndian.Uint64(data[i:])
		q := x ^ (ones * '"')
		b := x ^ (ones * '\\')
		// x, q and b share their high bits, so one ^x serves all three.
		if t := ((x - ones*0x20) | (q - ones) | (b - ones)) & ^x & highs; t != 0 {
			return i + bits.TrailingZeros64(t)>>3
		}
	}
	for ; i < len(data); i++ {
		if c := data[i]; c == '"' || c == '\\' || c < 0x20 {
			return i
		}
	}
	return i
}

// skipNumber reads a JSON number starting at i and returns the index just
// past it. What follows is left to the caller: "01" is a 0 followed by a
// byte that cannot follow a value.
func skipNumber(data []byte, i int) (int, bool) {
	n := len(data)
	if data[i] == '-' {
		i++
	}
	switch {
	case i >= n:
		return 0, false
	case data[i] == '0':
		i++
	case data[i] >= '1' && data[i] <= '9':
		i = skipDigits(data, i+1)
	default:
		return 0, false
	}
	if i < n && data[i] == '.' {
		j := skipDigits(data, i+1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < n && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < n && (data[i] == '+' || data[i] == '-') {
			i++
		}
		j := skipDigits(data, i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

func skipDigits(data []byte, i int) int {
	for i < len(data) && data[i] >= '0' && data[i] <= '9' {
		i++
	}
	return i
}

// literalEnd returns the index just past the true, false or null at i, or
// -1 when none is there.
func literalEnd(data []byte, i int) int {
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(data)-i >= len(lit) && string(data[i:i+len(lit)]) == lit {
			return i + len(lit)
		}
	}
	return -1
}

// Results of stringValue.
const (
	fieldOK = iota
	fieldMissing
	fieldNotString
)

// stringValue reads a member value recorded by scan as a non-empty string,
// the way json.Unmarshal decodes it into a Go string. Absent, null and ""
// are fieldMissing; any other non-string is fieldNotString. A string
// without escapes and of valid UTF-8 is returned in place; any other is
// decoded by encoding/json (which replaces invalid UTF-8 with U+FFFD), so
// the result is always what json.Unmarshal gives.
func stringValue(raw []byte) ([]byte, int) {
	switch {
	case raw == nil || string(raw) == "null":
		return nil, fieldMissing
	case raw[0] != '"':
		return nil, fieldNotString
	}
	s := raw[1 : len(raw)-1]
	if bytes.IndexByte(s, '\\') >= 0 || !utf8.Valid(s) {
		var dec string
		if err := json.Unmarshal(raw, &dec); err != nil {
			// scan checked the string: encoding/json cannot refuse it.
			return nil, fieldNotString
		}
		s = []byte(dec)
	}
	if len(s) == 0 {
		return nil, fieldMissing
	}
	return s, fieldOK
}

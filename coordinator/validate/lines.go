package validate

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// line is one line of a JSONL file as lineReader returns it.
type line struct {
	// data is the line without its '\n'; nil when tooLong.
	data []byte
	// start is the byte offset of the line's first byte; end is the offset
	// just past its '\n' (or the end of the file).
	start, end int64
	// tooLong reports that the line exceeded the cap; data is then empty
	// and the rest of the line was skipped.
	tooLong bool
}

// lineReader splits a stream into lines without ever holding more than max
// bytes of one line, so a file with a huge line cannot exhaust memory.
type lineReader struct {
	br  *bufio.Reader
	max int
	buf []byte
	off int64
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10), max: max}
}

// next returns the next line, or io.EOF once the input is exhausted. The
// returned data is valid until the following call.
func (lr *lineReader) next() (line, error) {
	lr.buf = lr.buf[:0]
	l := line{start: lr.off}
	var n int64
	for {
		frag, err := lr.br.ReadSlice('\n')
		n += int64(len(frag))
		if !l.tooLong {
			content := len(lr.buf) + len(frag)
			if len(frag) > 0 && frag[len(frag)-1] == '\n' {
				content--
			}
			if content > lr.max {
				l.tooLong = true
				lr.buf = lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, frag...)
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			if n == 0 {
				return line{}, io.EOF
			}
			break
		}
		if err != nil {
			return line{}, fmt.Errorf("read line at offset %d: %w", lr.off, err)
		}
		break
	}
	lr.off += n
	l.end = lr.off
	if !l.tooLong {
		data := lr.buf
		if len(data) > 0 && data[len(data)-1] == '\n' {
			data = data[:len(data)-1]
		}
		l.data = data
	}
	return l, nil
}

// isBlank reports whether b holds only JSON whitespace.
func isBlank(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
		default:
			return false
		}
	}
	return true
}

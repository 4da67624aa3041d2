package engine

import (
	"bufio"
	"bytes"
	"math"
	"strconv"
	"strings"
)

// The vLLM metrics Stats reads.
const (
	vllmRunning    = "vllm:num_requests_running"
	vllmWaiting    = "vllm:num_requests_waiting"
	vllmGenerated  = "vllm:generation_tokens_total"
	metricsMaxLine = 1 << 20
)

// parseVLLMMetrics sums the vLLM series Stats needs from a Prometheus text
// exposition. It reads samples line by line rather than with a strict
// parser: a server's other metrics (or an exposition quirk in them) must
// not hide the few this needs.
func parseVLLMMetrics(b []byte) Stats {
	var st Stats
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), metricsMaxLine)
	for sc.Scan() {
		name, value, ok := parseSample(sc.Text())
		if !ok {
			continue
		}
		switch name {
		case vllmRunning:
			st.RequestsRunning += int64(value)
		case vllmWaiting:
			st.RequestsWaiting += int64(value)
		case vllmGenerated:
			st.TokensGeneratedTotal += int64(value)
		}
	}
	return st
}

// parseSample splits a sample line "name{labels} value [timestamp]".
func parseSample(line string) (string, float64, bool) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return "", 0, false
	}
	var name, rest string
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", 0, false
		}
		name, rest = line[:i], line[j+1:]
	} else {
		var ok bool
		name, rest, ok = strings.Cut(line, " ")
		if !ok {
			return "", 0, false
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return "", 0, false
	}
	return strings.TrimSpace(name), v, true
}

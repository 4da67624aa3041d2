package sim

import (
	"net"
	"testing"
)

// listen returns a listener on a port chosen by the OS.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

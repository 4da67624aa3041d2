package coordinator

import (
	"net"
	"testing"
)

func TestRefusedTellsAClosedPortFromAnOpenOne(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := ln.Addr().String()
	if refused(open) {
		t.Fatal("an open port reads as refused")
	}
	ln.Close()
	if !refused(open) {
		t.Fatal("a closed port does not read as refused")
	}
}

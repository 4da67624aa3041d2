package coordinator

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// cutTransport is a gossip transport that a test can cut off the network:
// while cut, nothing it sends arrives, nothing sent to it is delivered, its
// dials fail and connections made to it are closed. Raft and RPC, on their
// own connections, are not affected.
type cutTransport struct {
	memberlist.NodeAwareTransport
	cut     atomic.Bool
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
}

var errCut = errors.New("test: gossip network cut")

func newCutTransport(inner memberlist.NodeAwareTransport) *cutTransport {
	t := &cutTransport{
		NodeAwareTransport: inner,
		packets:            make(chan *memberlist.Packet),
		streams:            make(chan net.Conn),
		done:               make(chan struct{}),
	}
	go t.forwardPackets()
	go t.forwardStreams()
	return t
}

func (t *cutTransport) forwardPackets() {
	for {
		select {
		case <-t.done:
			return
		case p := <-t.NodeAwareTransport.PacketCh():
			if t.cut.Load() {
				continue
			}
			select {
			case t.packets <- p:
			case <-t.done:
				return
			}
		}
	}
}

func (t *cutTransport) forwardStreams() {
	for {
		select {
		case <-t.done:
			return
		case c := <-t.NodeAwareTransport.StreamCh():
			if t.cut.Load() {
				_ = c.Close()
				continue
			}
			select {
			case t.streams <- c:
			case <-t.done:
				_ = c.Close()
				return
			}
		}
	}
}

func (t *cutTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *cutTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *cutTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.cut.Load() {
		return time.Now(), nil // lost on the way, as UDP is
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *cutTransport) WriteToAddress(b []byte, addr memberlist.Address) (time.Time, error) {
	if t.cut.Load() {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, addr)
}

func (t *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.cut.Load() {
		return nil, errCut
	}
	return t.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (t *cutTransport) DialAddressTimeout(addr memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.cut.Load() {
		return nil, errCut
	}
	return t.NodeAwareTransport.DialAddressTimeout(addr, timeout)
}

// Shutdown stops the inner transport, then the forwarding: the inner
// transport's listeners may be handing over a packet or connection until
// it returns (it waits for them), and memberlist reads until then.
func (t *cutTransport) Shutdown() error {
	err := t.NodeAwareTransport.Shutdown()
	t.once.Do(func() { close(t.done) })
	return err
}

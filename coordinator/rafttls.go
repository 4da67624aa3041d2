package coordinator

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/vbatch/vbatch/internal/tlsutil"
)

// raftStreamLayer is raft's StreamLayer over mutual TLS: both ends must
// hold a server certificate of this cluster, so neither an agent's nor an
// outsider's certificate can take part in raft.
type raftStreamLayer struct {
	net.Listener
	advertise net.Addr
	store     *tlsutil.Store
	serverCfg *tls.Config
}

func newTLSStreamLayer(ln net.Listener, adv net.Addr, store *tlsutil.Store) *raftStreamLayer {
	return &raftStreamLayer{Listener: ln, advertise: adv, store: store, serverCfg: store.ServerConfig(true, tlsutil.RoleServer)}
}

// Accept returns the next connection, wrapped in TLS; its handshake runs
// (bounded) on first use in raft's per-connection goroutine, so a silent
// client cannot stall the accept loop.
func (t *raftStreamLayer) Accept() (net.Conn, error) {
	conn, err := t.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &handshakeConn{Conn: tls.Server(conn, t.serverCfg)}, nil
}

// Dial connects to a raft peer and checks it is a server of this cluster.
func (t *raftStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return tlsutil.DialContext(ctx, &net.Dialer{}, string(address), t.store.ClientConfig(tlsutil.RoleServer))
}

// Addr is the address peers dial.
func (t *raftStreamLayer) Addr() net.Addr { return t.advertise }

// handshakeConn completes the server handshake within a deadline before
// the first read or write.
type handshakeConn struct {
	*tls.Conn
	once sync.Once
	err  error
}

func (h *handshakeConn) handshake() error {
	h.once.Do(func() {
		if h.err = tlsutil.Handshake(h.Conn); h.err != nil {
			_ = h.Conn.Close()
		}
	})
	return h.err
}

func (h *handshakeConn) Read(b []byte) (int, error) {
	if err := h.handshake(); err != nil {
		return 0, err
	}
	return h.Conn.Read(b)
}

func (h *handshakeConn) Write(b []byte) (int, error) {
	if err := h.handshake(); err != nil {
		return 0, err
	}
	return h.Conn.Write(b)
}

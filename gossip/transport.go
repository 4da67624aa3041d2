package gossip

import (
	"fmt"
	"strings"

	"github.com/hashicorp/memberlist"
)

// TransportWrapper wraps the pool's network transport; see
// Config.WrapTransport.
type TransportWrapper func(memberlist.NodeAwareTransport) memberlist.NodeAwareTransport

// bindRetries is how often binding a port the OS picks is tried: TCP and
// UDP must get the same number, which another process may take in
// between (memberlist retries the same way).
const bindRetries = 10

// setupTransport gives memberlist the transport cfg.WrapTransport makes of
// a network transport on mc's bind address; without a wrapper memberlist
// makes its own.
func setupTransport(mc *memberlist.Config, cfg Config) error {
	if cfg.WrapTransport == nil {
		return nil
	}
	nc := &memberlist.NetTransportConfig{BindAddrs: []string{mc.BindAddr}, BindPort: mc.BindPort, Logger: mc.Logger}
	tries := 1
	if mc.BindPort == 0 {
		tries = bindRetries
	}
	var nt *memberlist.NetTransport
	var err error
	for range tries {
		if nt, err = memberlist.NewNetTransport(nc); err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("gossip: transport on %s: %w", cfg.BindAddr, err)
	}
	if mc.BindPort == 0 {
		mc.BindPort = nt.GetAutoBindPort()
		mc.AdvertisePort = mc.BindPort
	}
	mc.Transport = cfg.WrapTransport(nt)
	return nil
}

package coordinator

import (
	"context"
	"fmt"
	"github.com/vbatch/vbatch/coordinator/api"

	"github.com/vbatch/vbatch/gossip"
)

// KeyringOp runs a gossip keyring operation (install, use, remove, list)
// on every member of the pool, coordinators and agents alike, and reports
// each node's answer. Each node persists its keyring in its data dir.
func (c *Coordinator) KeyringOp(ctx context.Context, op, key string) (*gossip.KeyringResult, error) {
	kind, err := gossip.ParseKeyringOp(op)
	if err != nil {
		return nil, err
	}
	res, err := c.pool.KeyringOp(ctx, kind, key)
	if err != nil {
		return res, fmt.Errorf("gossip keyring %s: %w", op, err)
	}
	c.log.Info("gossip keyring operation", "op", op, "nodes", res.NumNodes, "answered", res.NumResp, "errors", res.NumErr)
	return res, nil
}

var _ api.KeyringOps = (*Coordinator)(nil)

package gossip

// Cluster-wide keyring operations, done the way Serf's KeyManager does them:
// the calling node sends the operation to every live member, each member
// applies it to its own keyring and answers, and the caller tallies the
// answers.
//
// Trust model: a keyring message is acted on only when the pool is
// encrypted. memberlist then drops anything that does not decrypt under a
// key on this node's ring (GossipVerifyIncoming), so a message that reaches
// NotifyMsg was sent by a holder of a current gossip key. Holding the gossip
// key is therefore the authority to install, switch and remove keys across
// the cluster, exactly as in Serf and Consul: guard the key (and the
// keyring file) as the cluster's root credential. In an unencrypted pool
// nothing is authenticated, so keyring messages are ignored and KeyringOp
// refuses with ErrNoKeyring.
//
// Wire format: one message-type byte followed by a JSON object. The list of
// types only grows; a node drops (and logs) a type it does not know, so an
// older node never misreads a newer message.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/vbatch/vbatch/internal/ids"
)

// KeyringOpKind names a cluster-wide keyring operation.
type KeyringOpKind string

// The keyring operations. A rotation is install (new key everywhere),
// use (make it primary everywhere), remove (drop the old key everywhere),
// checking with list between steps that every node holds the same keys.
const (
	// KeyringInstall adds a key to every node's ring; nodes then decrypt
	// with it but still encrypt with their primary key.
	KeyringInstall KeyringOpKind = "install"
	// KeyringUse makes an installed key the primary (encrypting) key.
	KeyringUse KeyringOpKind = "use"
	// KeyringRemove drops a key that is not primary from every ring.
	// Removing a key a node does not hold is a no-op, so retries are safe.
	KeyringRemove KeyringOpKind = "remove"
	// KeyringList reports the keys each node holds.
	KeyringList KeyringOpKind = "list"
)

// ParseKeyringOp turns "install", "use", "remove" or "list" into a
// KeyringOpKind.
func ParseKeyringOp(s string) (KeyringOpKind, error) {
	switch op := KeyringOpKind(s); op {
	case KeyringInstall, KeyringUse, KeyringRemove, KeyringList:
		return op, nil
	}
	return "", fmt.Errorf("gossip: unknown keyring operation %q (want install, use, remove or list)", s)
}

// Errors KeyringOp returns (wrapped) that callers branch on.
var (
	// ErrNoKeyring means the pool runs without encryption, so it has no
	// keyring to change and no way to authenticate keyring messages.
	ErrNoKeyring = errors.New("gossip encryption is not enabled")
	// ErrPrimaryKey refuses removing the key a node encrypts with: use
	// another key first.
	ErrPrimaryKey = errors.New("cannot remove the primary gossip key")
	// ErrKeyNotInstalled refuses making primary a key that is not on the
	// ring: install it first.
	ErrKeyNotInstalled = errors.New("gossip key is not installed")
	// ErrKeyringPartial means some member failed or did not answer; the
	// KeyringResult returned with it says which.
	ErrKeyringPartial = errors.New("keyring operation did not succeed on every node")
)

// DefaultKeyringTimeout bounds KeyringOp when its context has no deadline,
// so a member that dies mid-operation cannot hang the caller.
const DefaultKeyringTimeout = 15 * time.Second

// KeyringResult tallies a KeyringOp across the members asked.
type KeyringResult struct {
	// Op is the operation performed.
	Op KeyringOpKind `json:"op"`
	// NumNodes is how many live members (this node included) were asked.
	NumNodes int `json:"num_nodes"`
	// NumResp is how many of them answered, successfully or not.
	NumResp int `json:"num_resp"`
	// NumErr is how many failed, could not be reached, or did not answer.
	NumErr int `json:"num_err"`
	// Errors maps a member name to why the operation failed there.
	Errors map[string]string `json:"errors,omitempty"`
	// Keys maps each base64 key to the number of members holding it (list
	// only). A finished rotation shows one key held by NumNodes members.
	Keys map[string]int `json:"keys,omitempty"`
	// PrimaryKeys maps each base64 key to the number of members using it
	// as their primary key (list only).
	PrimaryKeys map[string]int `json:"primary_keys,omitempty"`
}

// Message types, the first byte of a user message. Append only.
const (
	msgKeyringRequest  byte = 1
	msgKeyringResponse byte = 2
)

// maxMsgSize bounds an incoming user message; keyring messages are tiny.
const maxMsgSize = 64 << 10

// sendParallel bounds concurrent SendReliable calls of one KeyringOp.
const sendParallel = 16

type keyringRequest struct {
	ID   string        `json:"id"`
	From string        `json:"from"`
	Op   KeyringOpKind `json:"op"`
	Key  string        `json:"key,omitempty"`
}

type keyringResponse struct {
	ID      string   `json:"id"`
	Node    string   `json:"node"`
	Err     string   `json:"err,omitempty"`
	Keys    []string `json:"keys,omitempty"`
	Primary string   `json:"primary,omitempty"`
	// unanswered marks a member that was not reached; never on the wire.
	unanswered bool
}

// pendingOp collects the answers to one KeyringOp.
type pendingOp struct {
	asked map[string]bool
	seen  map[string]bool
	ch    chan keyringResponse // capacity len(asked): deliver never blocks
}

// keyringState is the Pool's encryption state; keyring is nil when
// encryption is off.
type keyringState struct {
	keyring *memberlist.Keyring
	// keyMu serialises changes to the ring with writing the keyring file,
	// so the file always matches some state the ring was in.
	keyMu sync.Mutex

	pendMu  sync.Mutex
	pending map[string]*pendingOp

	inbox    chan []byte // keyring requests for the worker
	done     chan struct{}
	stopOnce sync.Once
}

// EncryptionEnabled reports whether the pool encrypts gossip, and so
// whether KeyringOp is available.
func (p *Pool) EncryptionEnabled() bool { return p.keyring != nil }

// KeyringOp performs op on the keyring of every live member, this node
// included (the others first, then this node), and returns the tally. key is a base64 key (see ParseKey) for
// install, use and remove, and empty for list.
//
// It refuses before contacting anyone when encryption is off
// (ErrNoKeyring), when key is malformed (ErrInvalidKey), when use names a
// key this node does not hold (ErrKeyNotInstalled) and when remove names
// this node's primary key (ErrPrimaryKey); each member re-checks the last
// two against its own ring. It waits until every other member has
// answered or ctx ends (DefaultKeyringTimeout when ctx has no deadline),
// then applies op here whatever the others said. When any
// member failed or did not answer, it returns the result together with an
// error wrapping ErrKeyringPartial; the operation is idempotent, so the
// caller can simply retry.
func (p *Pool) KeyringOp(ctx context.Context, op KeyringOpKind, key string) (*KeyringResult, error) {
	if _, err := ParseKeyringOp(string(op)); err != nil {
		return nil, err
	}
	if p.keyring == nil {
		return nil, fmt.Errorf("gossip: keyring %s: %w", op, ErrNoKeyring)
	}
	req := keyringRequest{ID: ids.Random(20), From: p.cfg.Name, Op: op}
	if op == KeyringList {
		if key != "" {
			return nil, fmt.Errorf("gossip: keyring list takes no key")
		}
	} else {
		k, err := ParseKey(key)
		if err != nil {
			return nil, fmt.Errorf("gossip: keyring %s: %w", op, err)
		}
		if err := p.checkKeyringOp(op, k); err != nil {
			return nil, fmt.Errorf("gossip: keyring %s: %w", op, err)
		}
		req.Key = encodeKey(k)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultKeyringTimeout)
		defer cancel()
	}
	msg, err := encodeMsg(msgKeyringRequest, req)
	if err != nil {
		return nil, err
	}

	var remote []*memberlist.Node
	for _, n := range p.nodeList() {
		if n.Name != p.cfg.Name {
			remote = append(remote, n)
		}
	}
	pend := &pendingOp{asked: map[string]bool{}, seen: map[string]bool{}, ch: make(chan keyringResponse, len(remote))}
	for _, n := range remote {
		pend.asked[n.Name] = true
	}
	p.pendMu.Lock()
	p.pending[req.ID] = pend
	p.pendMu.Unlock()
	defer func() {
		p.pendMu.Lock()
		delete(p.pending, req.ID)
		p.pendMu.Unlock()
	}()

	sem := make(chan struct{}, sendParallel)
	for _, n := range remote {
		go func(n *memberlist.Node) {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			if err := p.list.SendReliable(n, msg); err != nil {
				p.deliver(keyringResponse{ID: req.ID, Node: n.Name, Err: fmt.Sprintf("send: %v", err), unanswered: true})
			}
		}(n)
	}

	res := &KeyringResult{Op: op, NumNodes: len(remote) + 1, Errors: map[string]string{}}
	if op == KeyringList {
		res.Keys, res.PrimaryKeys = map[string]int{}, map[string]int{}
	}
	answered := map[string]bool{}
	var ctxErr error
	for len(answered) < len(remote) && ctxErr == nil {
		select {
		case r := <-pend.ch:
			answered[r.Node] = true
			res.add(r)
		case <-ctx.Done():
			ctxErr = ctx.Err()
		}
	}
	// This node last, directly. Last, because until then this node must
	// still hold every key the others answer with: a member refusing to
	// remove its primary key answers encrypted with that very key. The
	// others applied the operation by now, so this node goes ahead too,
	// as in Serf, where every member decides for itself.
	res.add(p.applyKeyringOp(req))
	if ctxErr != nil {
		for name := range pend.asked {
			if !answered[name] {
				res.NumErr++
				res.Errors[name] = "no response: " + ctxErr.Error()
			}
		}
		return res, fmt.Errorf("gossip: keyring %s: %d of %d nodes answered: %w: %w",
			op, res.NumResp, res.NumNodes, ErrKeyringPartial, ctxErr)
	}
	if res.NumErr > 0 {
		return res, fmt.Errorf("gossip: keyring %s: %d of %d nodes failed: %w", op, res.NumErr, res.NumNodes, ErrKeyringPartial)
	}
	return res, nil
}

func (r *KeyringResult) add(resp keyringResponse) {
	if !resp.unanswered {
		r.NumResp++
	}
	if resp.Err != "" {
		r.NumErr++
		r.Errors[resp.Node] = resp.Err
		return
	}
	if r.Op != KeyringList {
		return
	}
	for _, k := range resp.Keys {
		r.Keys[k]++
	}
	if resp.Primary != "" {
		r.PrimaryKeys[resp.Primary]++
	}
}

// checkKeyringOp refuses use of a key not on this node's ring and removal
// of this node's primary key with sentinel errors callers can branch on.
func (p *Pool) checkKeyringOp(op KeyringOpKind, key []byte) error {
	p.keyMu.Lock()
	defer p.keyMu.Unlock()
	return p.checkKeyringOpLocked(op, key)
}

func (p *Pool) checkKeyringOpLocked(op KeyringOpKind, key []byte) error {
	switch op {
	case KeyringUse:
		for _, k := range p.keyring.GetKeys() {
			if bytes.Equal(k, key) {
				return nil
			}
		}
		return ErrKeyNotInstalled
	case KeyringRemove:
		if bytes.Equal(p.keyring.GetPrimaryKey(), key) {
			return ErrPrimaryKey
		}
	}
	return nil
}

// applyKeyringOp performs req on this node's ring, persists the ring when
// it changed, and returns this node's answer.
func (p *Pool) applyKeyringOp(req keyringRequest) keyringResponse {
	resp := keyringResponse{ID: req.ID, Node: p.cfg.Name}
	if err := p.applyKeyringOpErr(req, &resp); err != nil {
		resp.Err = err.Error()
		p.logger.Warn("gossip keyring operation failed", "op", req.Op, "from", req.From, "err", err)
	} else if req.Op != KeyringList {
		p.logger.Info("gossip keyring operation applied", "op", req.Op, "from", req.From)
	}
	return resp
}

func (p *Pool) applyKeyringOpErr(req keyringRequest, resp *keyringResponse) error {
	p.keyMu.Lock()
	defer p.keyMu.Unlock()
	if req.Op == KeyringList {
		for _, k := range p.keyring.GetKeys() {
			resp.Keys = append(resp.Keys, encodeKey(k))
		}
		resp.Primary = encodeKey(p.keyring.GetPrimaryKey())
		return nil
	}
	if _, err := ParseKeyringOp(string(req.Op)); err != nil {
		return err
	}
	key, err := ParseKey(req.Key)
	if err != nil {
		return err
	}
	if err := p.checkKeyringOpLocked(req.Op, key); err != nil {
		return err
	}
	switch req.Op {
	case KeyringInstall:
		err = p.keyring.AddKey(key)
	case KeyringUse:
		err = p.keyring.UseKey(key)
	case KeyringRemove:
		err = p.keyring.RemoveKey(key)
	}
	if err != nil {
		return fmt.Errorf("%s key: %w", req.Op, err)
	}
	if p.cfg.KeyringFile != "" {
		// The ring has changed in memory and the node keeps talking with
		// it; a failed write is reported so the operator can fix the disk
		// and retry (the operation is idempotent).
		keys := make([][]byte, 0, len(p.keyring.GetKeys()))
		keys = append(keys, p.keyring.GetKeys()...)
		if err := writeKeyringFile(p.cfg.KeyringFile, keys); err != nil {
			return fmt.Errorf("persist keyring: %w", err)
		}
	}
	return nil
}

// deliver hands an answer to the KeyringOp waiting for it, dropping
// answers nobody waits for, from members that were not asked, and repeats.
func (p *Pool) deliver(r keyringResponse) {
	p.pendMu.Lock()
	defer p.pendMu.Unlock()
	pend := p.pending[r.ID]
	if pend == nil || !pend.asked[r.Node] || pend.seen[r.Node] {
		return
	}
	pend.seen[r.Node] = true
	pend.ch <- r
}

// notifyMsg is the delegate's NotifyMsg. It runs on memberlist's goroutine,
// so it only decodes answers and queues requests; buf is memberlist's and
// must not be kept.
func (p *Pool) notifyMsg(buf []byte) {
	if p.keyring == nil {
		p.logger.Debug("gossip: ignoring user message: encryption is off")
		return
	}
	if len(buf) == 0 || len(buf) > maxMsgSize {
		p.logger.Warn("gossip: dropping user message", "bytes", len(buf))
		return
	}
	switch buf[0] {
	case msgKeyringRequest:
		select {
		case p.inbox <- bytes.Clone(buf[1:]):
		default:
			p.logger.Warn("gossip: keyring request queue full; dropping request")
		}
	case msgKeyringResponse:
		var r keyringResponse
		if err := json.Unmarshal(buf[1:], &r); err != nil {
			p.logger.Warn("gossip: bad keyring response", "err", err)
			return
		}
		p.deliver(r)
	default:
		p.logger.Warn("gossip: dropping user message of unknown type", "type", buf[0])
	}
}

// runKeyringWorker applies queued keyring requests in arrival order and
// answers each sender, until the pool stops.
func (p *Pool) runKeyringWorker() {
	for {
		select {
		case <-p.done:
			return
		case b := <-p.inbox:
			select {
			case <-p.done: // stopped while both were ready
				return
			default:
			}
			p.handleKeyringRequest(b)
		}
	}
}

func (p *Pool) handleKeyringRequest(b []byte) {
	var req keyringRequest
	if err := json.Unmarshal(b, &req); err != nil {
		p.logger.Warn("gossip: bad keyring request", "err", err)
		return
	}
	resp := p.applyKeyringOp(req)
	msg, err := encodeMsg(msgKeyringResponse, resp)
	if err != nil {
		p.logger.Error("gossip: encode keyring response", "err", err)
		return
	}
	p.nodesMu.Lock()
	n := p.nodes[req.From]
	p.nodesMu.Unlock()
	if n != nil {
		if err := p.list.SendReliable(n, msg); err != nil {
			p.logger.Warn("gossip: answer keyring request", "to", req.From, "err", err)
		}
		return
	}
	p.logger.Warn("gossip: keyring request from a node not in the pool", "from", req.From)
}

func encodeMsg(typ byte, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("gossip: encode message type %d: %w", typ, err)
	}
	return append([]byte{typ}, b...), nil
}

// stopKeyring stops the request worker; safe to call more than once.
func (p *Pool) stopKeyring() {
	p.stopOnce.Do(func() { close(p.done) })
}

package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/vbatch/vbatch/fsm"
	"github.com/vbatch/vbatch/gossip"
)

// ClusterOps is what the cluster operation endpoints need from the
// coordinator (vbctl cluster transfer-leadership, remove-peer, join and
// snapshot). A Backend that does not implement it answers them with 501.
type ClusterOps interface {
	// TransferLeadership hands leadership from the current leader to the
	// voter to, or to the most up-to-date voter when to is empty, and
	// returns the id of the leader once it is known.
	TransferLeadership(ctx context.Context, to string) (leader string, err error)
	// RemovePeer removes a server from the raft configuration. It fails
	// with ErrUnknownPeer for an id not in the configuration, with
	// ErrPeerIsLeader for the leader itself and, unless force is set, with
	// an *UnsafeRemovalError when the healthy voters left would not be a
	// majority of the new configuration.
	RemovePeer(ctx context.Context, id string, force bool) error
	// JoinPool makes this coordinator's gossip pool join the addresses and
	// returns how many answered; the leader then adds new coordinators.
	JoinPool(ctx context.Context, addrs []string) (contacted int, err error)
	// SnapshotState returns a private copy of the replicated state taken
	// after a consistent read, and the raft index it reflects.
	SnapshotState(ctx context.Context) (state *fsm.State, applied uint64, err error)
	// RestoreSnapshot replaces the replicated state on every node with the
	// snapshot stream (fsm.WriteSnapshot) and returns the raft index it was
	// installed at. An unreadable stream fails with ErrInvalidSnapshot.
	RestoreSnapshot(ctx context.Context, snapshot []byte) (index uint64, err error)
}

// Sentinel errors of ClusterOps that the API answers with a 4xx.
var (
	// ErrUnknownPeer means no raft server has the id (404).
	ErrUnknownPeer = errors.New("no raft server with this id")
	// ErrPeerIsLeader means the operation would remove the leader (409):
	// transfer leadership first.
	ErrPeerIsLeader = errors.New("the server is the raft leader")
	// ErrInvalidSnapshot means a snapshot to restore cannot be read (400).
	ErrInvalidSnapshot = errors.New("invalid snapshot")
)

// UnsafeRemovalError refuses a removal that would leave the raft
// configuration without a healthy majority of voters (409 unsafe_removal):
// the leader would step down at once and the cluster stay leaderless until
// the unhealthy voters return. RemovePeer with force skips the check.
type UnsafeRemovalError struct {
	// ID is the server the removal was asked for.
	ID string
	// Voters is how many voters the configuration would keep.
	Voters int
	// Healthy lists those of them that are healthy (the leader, and every
	// voter alive in gossip and in recent contact with the leader).
	Healthy []string
}

func (e *UnsafeRemovalError) Error() string {
	return fmt.Sprintf("removing %s would leave %d voters of which %d are healthy (%s); a majority needs %d",
		e.ID, e.Voters, len(e.Healthy), strings.Join(e.Healthy, ", "), e.Voters/2+1)
}

// MaxRestoreBytes caps the snapshot a restore accepts: it is held in
// memory on the receiving coordinator and on the leader.
const MaxRestoreBytes = 1 << 30

// clusterOps returns the backend's cluster operations or a 501.
func (a *API) clusterOps() (ClusterOps, error) {
	ops, ok := a.b.(ClusterOps)
	if !ok {
		return nil, &apiError{status: http.StatusNotImplemented, typ: typeServer, code: "not_implemented",
			message: "This server does not support cluster operations."}
	}
	return ops, nil
}

// clusterOpError maps the ClusterOps sentinels to their answers; any other
// error goes through toAPIError.
func clusterOpError(err error, id string) error {
	switch {
	case errors.Is(err, ErrUnknownPeer):
		return &apiError{status: http.StatusNotFound, typ: typeInvalidRequest, code: codeNotFound, param: "id",
			message: fmt.Sprintf("No raft server with id '%s'.", id), cause: err}
	case errors.Is(err, ErrPeerIsLeader):
		return &apiError{status: http.StatusConflict, typ: typeInvalidRequest, code: codeConflict, param: "id",
			message: fmt.Sprintf("Server '%s' is the leader; transfer leadership away from it first (vbctl cluster transfer-leadership).", id), cause: err}
	case errors.Is(err, ErrInvalidSnapshot):
		return &apiError{status: http.StatusBadRequest, typ: typeInvalidRequest, code: codeInvalidValue,
			message: sentence(err), cause: err}
	}
	var unsafe *UnsafeRemovalError
	if errors.As(err, &unsafe) {
		healthy := "none"
		if len(unsafe.Healthy) > 0 {
			healthy = strings.Join(unsafe.Healthy, ", ")
		}
		return &apiError{status: http.StatusConflict, typ: typeInvalidRequest, code: codeUnsafeRemoval, param: "id",
			message: fmt.Sprintf("Removing '%s' would leave %d voters of which %d are healthy (%s), not a majority (%d): "+
				"the cluster would lose its leader until the others return. Bring the unhealthy voters back or remove a dead one first, "+
				"or pass force (vbctl cluster remove-peer --force) to remove it anyway.",
				id, unsafe.Voters, len(unsafe.Healthy), healthy, unsafe.Voters/2+1), cause: err}
	}
	return err
}

// transferLeadership serves POST /v1/admin/cluster/transfer-leadership.
func (a *API) transferLeadership(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ops, err := a.clusterOps()
	if err != nil {
		return err
	}
	var req struct {
		To string `json:"to"`
	}
	if r.ContentLength != 0 {
		if err := readJSON(r, &req); err != nil {
			return err
		}
	}
	setAuditTarget(r, "", req.To)
	leader, err := ops.TransferLeadership(r.Context(), req.To)
	if err != nil {
		return clusterOpError(err, req.To)
	}
	writeJSON(w, http.StatusOK, map[string]any{"leader": leader})
	return nil
}

// removePeer serves POST /v1/admin/cluster/remove-peer.
func (a *API) removePeer(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ops, err := a.clusterOps()
	if err != nil {
		return err
	}
	var req struct {
		ID string `json:"id"`
		// Force skips the check that a healthy majority of voters remains.
		Force bool `json:"force"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.ID == "" {
		return missingParam("id")
	}
	setAuditTarget(r, "", req.ID)
	if err := ops.RemovePeer(r.Context(), req.ID, req.Force); err != nil {
		return clusterOpError(err, req.ID)
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": req.ID, "removed": true})
	return nil
}

// joinPool serves POST /v1/admin/cluster/join.
func (a *API) joinPool(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ops, err := a.clusterOps()
	if err != nil {
		return err
	}
	var req struct {
		Addresses []string `json:"addresses"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	var addrs []string
	for _, s := range req.Addresses {
		if s = strings.TrimSpace(s); s != "" {
			addrs = append(addrs, s)
		}
	}
	if len(addrs) == 0 {
		return missingParam("addresses")
	}
	if len(addrs) > maxJoinAddresses {
		return invalidValue("addresses", "Invalid 'addresses': at most %d addresses, got %d; any one member's address is enough.", maxJoinAddresses, len(addrs))
	}
	setAuditTarget(r, "", strings.Join(addrs, ","))
	n, err := ops.JoinPool(r.Context(), addrs)
	if err != nil {
		return &apiError{status: http.StatusBadGateway, typ: typeServer, code: "join_failed", param: "addresses",
			message: fmt.Sprintf("Could not join any of %s: %v", strings.Join(addrs, ", "), err), cause: err}
	}
	writeJSON(w, http.StatusOK, map[string]any{"contacted": n})
	return nil
}

// KeyringOps is the gossip keyring rotation of vbctl cluster keyring. A
// Backend that does not implement it answers with 501.
type KeyringOps interface {
	// KeyringOp runs op (install, use, remove, list) with key on every
	// member of the gossip pool.
	KeyringOp(ctx context.Context, op, key string) (*gossip.KeyringResult, error)
}

// keyring serves POST /v1/admin/cluster/keyring: {"op", "key"}. The key
// never reaches the audit log or any error message.
func (a *API) keyring(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ops, ok := a.b.(KeyringOps)
	if !ok {
		return &apiError{status: http.StatusNotImplemented, typ: typeServer, code: "not_implemented",
			message: "This server does not support gossip keyring operations."}
	}
	var req struct {
		Op  string `json:"op"`
		Key string `json:"key"`
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.Op == "" {
		return missingParam("op")
	}
	if _, err := gossip.ParseKeyringOp(req.Op); err != nil {
		return invalidValue("op", "Invalid 'op': %q is not one of install, use, remove, list.", req.Op)
	}
	if req.Op != string(gossip.KeyringList) && req.Key == "" {
		return missingParam("key")
	}
	setAuditTarget(r, "", "keyring:"+req.Op)
	res, err := ops.KeyringOp(r.Context(), req.Op, req.Key)
	if err != nil {
		return keyringError(err, res)
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// keyringError maps gossip's keyring errors to answers.
func keyringError(err error, res *gossip.KeyringResult) error {
	switch {
	case errors.Is(err, gossip.ErrInvalidKey):
		return invalidValue("key", "Invalid 'key': a gossip key is the base64 encoding of 32 bytes (vbatch gossip keygen).")
	case errors.Is(err, gossip.ErrNoKeyring):
		return &apiError{status: http.StatusConflict, typ: typeInvalidRequest, code: codeConflict,
			message: "Gossip encryption is off on this cluster: start every node with --gossip-key-file to use a keyring.", cause: err}
	case errors.Is(err, gossip.ErrPrimaryKey):
		return &apiError{status: http.StatusConflict, typ: typeInvalidRequest, code: codeConflict, param: "key",
			message: "That key is the primary gossip key: 'use' another key first, then remove it.", cause: err}
	case errors.Is(err, gossip.ErrKeyNotInstalled):
		return &apiError{status: http.StatusConflict, typ: typeInvalidRequest, code: codeConflict, param: "key",
			message: "That key is not installed: 'install' it on every node first.", cause: err}
	case errors.Is(err, gossip.ErrKeyringPartial) && res != nil:
		nodes := make([]string, 0, len(res.Errors))
		for n, e := range res.Errors {
			nodes = append(nodes, n+": "+e)
		}
		slices.Sort(nodes)
		return &apiError{status: http.StatusBadGateway, typ: typeServer, code: "keyring_partial",
			message: fmt.Sprintf("The keyring operation reached %d of %d nodes; it is safe to retry. %s",
				res.NumResp-res.NumErr, res.NumNodes, strings.Join(nodes, "; ")), cause: err}
	}
	return err
}

// maxJoinAddresses bounds one join: each address is contacted.
const maxJoinAddresses = 64

// snapshotIndexHeader carries the raft index a saved snapshot reflects.
const snapshotIndexHeader = "X-Vbatch-Snapshot-Index"

// saveSnapshot serves GET /v1/admin/cluster/snapshot: the replicated state
// after a consistent read, as a snapshot stream.
func (a *API) saveSnapshot(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ops, err := a.clusterOps()
	if err != nil {
		return err
	}
	st, applied, err := ops.SnapshotState(r.Context())
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set(snapshotIndexHeader, strconv.FormatUint(applied, 10))
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriter(w)
	err = fsm.WriteSnapshot(bw, st, applied)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		// The status is sent: the client sees a truncated stream, which
		// ReadSnapshot refuses.
		a.log.Error("write snapshot", "request_id", r.Header.Get(requestIDHeader), "err", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// restoreSnapshot serves POST /v1/admin/cluster/snapshot/restore.
func (a *API) restoreSnapshot(w http.ResponseWriter, r *http.Request, _ *principal) error {
	ops, err := a.clusterOps()
	if err != nil {
		return err
	}
	// The body is capped at MaxRestoreBytes by serveEndpoint.
	data, err := io.ReadAll(r.Body)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge,
			message: fmt.Sprintf("The snapshot is larger than %d bytes.", MaxRestoreBytes), cause: err}
	}
	if err != nil {
		return badRequest(codeInvalidValue, "", "Could not read the snapshot: %v", err)
	}
	index, err := ops.RestoreSnapshot(r.Context(), data)
	if err != nil {
		return clusterOpError(err, "")
	}
	writeJSON(w, http.StatusOK, map[string]any{"restored": true, "index": index})
	return nil
}

package api

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/vbatch/vbatch/fsm"
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
	// with ErrUnknownPeer for an id not in the configuration and with
	// ErrPeerIsLeader for the leader itself.
	RemovePeer(ctx context.Context, id string) error
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
	}
	if err := readJSON(r, &req); err != nil {
		return err
	}
	if req.ID == "" {
		return missingParam("id")
	}
	if err := ops.RemovePeer(r.Context(), req.ID); err != nil {
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
	n, err := ops.JoinPool(r.Context(), addrs)
	if err != nil {
		return &apiError{status: http.StatusBadGateway, typ: typeServer, code: "join_failed", param: "addresses",
			message: fmt.Sprintf("Could not join any of %s: %v", strings.Join(addrs, ", "), err), cause: err}
	}
	writeJSON(w, http.StatusOK, map[string]any{"contacted": n})
	return nil
}

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
	data, err := io.ReadAll(io.LimitReader(r.Body, MaxRestoreBytes+1))
	if err != nil {
		return badRequest(codeInvalidValue, "", "Could not read the snapshot: %v", err)
	}
	if len(data) > MaxRestoreBytes {
		return &apiError{status: http.StatusRequestEntityTooLarge, typ: typeInvalidRequest, code: codeFileTooLarge,
			message: fmt.Sprintf("The snapshot is larger than %d bytes.", MaxRestoreBytes)}
	}
	index, err := ops.RestoreSnapshot(r.Context(), data)
	if err != nil {
		return clusterOpError(err, "")
	}
	writeJSON(w, http.StatusOK, map[string]any{"restored": true, "index": index})
	return nil
}

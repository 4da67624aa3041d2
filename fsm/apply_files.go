package fsm

import (
	"google.golang.org/protobuf/proto"

	vbatchv1 "github.com/vbatch/vbatch/rpc/gen/vbatch/v1"
)

func (a *applyCtx) createAPIKey(c *vbatchv1.CreateAPIKey) error {
	k := c.GetKey()
	if k.GetId() == "" || k.Project == "" || len(k.Hash) == 0 {
		return Reject(ErrInvalid, "api key needs id, project and hash")
	}
	k = proto.Clone(k).(*vbatchv1.APIKey)
	if old, ok := a.s.APIKeys[k.Id]; ok {
		if k.CreatedAt == 0 {
			k.CreatedAt = old.CreatedAt
		}
		if proto.Equal(old, k) {
			return nil // a re-applied create
		}
		return Reject(ErrExists, "api key %s exists", k.Id)
	}
	if k.CreatedAt == 0 {
		k.CreatedAt = a.sec()
	}
	a.s.APIKeys[k.Id] = k
	return nil
}

func (a *applyCtx) revokeAPIKey(c *vbatchv1.RevokeAPIKey) error {
	k, ok := a.s.APIKeys[c.Id]
	if !ok {
		return Reject(ErrNotFound, "api key %s", c.Id)
	}
	if k.RevokedAt == 0 {
		k.RevokedAt = a.sec()
	}
	return nil
}

func (a *applyCtx) createFile(c *vbatchv1.CreateFile) error {
	f := c.GetFile()
	if f.GetId() == "" || f.Project == "" {
		return Reject(ErrInvalid, "file needs id and project")
	}
	if f.Bytes < 0 || f.Lines < 0 {
		return Reject(ErrInvalid, "file %s: negative size", f.Id)
	}
	if c.ExpiresAfterSeconds < 0 {
		return Reject(ErrInvalid, "file %s: negative expires_after_seconds %d", f.Id, c.ExpiresAfterSeconds)
	}
	f = proto.Clone(f).(*vbatchv1.File)
	old, exists := a.s.Files[f.Id]
	if f.CreatedAt == 0 {
		// An unset created_at is the applier's time; a re-applied create
		// finds the one the first apply gave.
		f.CreatedAt = a.sec()
		if exists {
			f.CreatedAt = old.CreatedAt
		}
	}
	if c.ExpiresAfterSeconds > 0 {
		// Level 10: the file's lifetime counts on the FSM's clock, as
		// created_at does, not on the proposer's.
		f.ExpiresAt = f.CreatedAt + c.ExpiresAfterSeconds
	}
	if exists {
		if proto.Equal(old, f) {
			return nil // a re-applied create
		}
		return Reject(ErrExists, "file %s exists", f.Id)
	}
	a.s.Files[f.Id] = f
	return nil
}

// deleteFile deletes a file no live batch uses; with keep_position (FSM
// level 9) it keeps the file's list position as a tombstone.
func (a *applyCtx) deleteFile(c *vbatchv1.DeleteFile) error {
	f, ok := a.s.Files[c.Id]
	if !ok || (c.Project != "" && f.Project != c.Project) {
		return Reject(ErrNotFound, "file %s", c.Id)
	}
	if UsedByLiveBatch(a.s, c.Id) {
		return Reject(ErrConflict, "file %s is used by a batch that is still running", c.Id)
	}
	delete(a.s.Files, c.Id)
	if c.KeepPosition {
		a.s.addTombstone(&vbatchv1.FileTombstone{Id: f.Id, Project: f.Project, CreatedAt: f.CreatedAt, DeletedAt: a.sec()})
	}
	return nil
}

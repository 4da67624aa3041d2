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
	if old, ok := a.s.APIKeys[k.Id]; ok {
		if proto.Equal(old, k) {
			return nil
		}
		return Reject(ErrExists, "api key %s exists", k.Id)
	}
	k = proto.Clone(k).(*vbatchv1.APIKey)
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
	if old, ok := a.s.Files[f.Id]; ok {
		if proto.Equal(old, f) || (f.CreatedAt == 0 && sameFileIgnoringTime(old, f)) {
			return nil
		}
		return Reject(ErrExists, "file %s exists", f.Id)
	}
	f = proto.Clone(f).(*vbatchv1.File)
	if f.CreatedAt == 0 {
		f.CreatedAt = a.sec()
	}
	a.s.Files[f.Id] = f
	return nil
}

func sameFileIgnoringTime(old, f *vbatchv1.File) bool {
	o := proto.Clone(old).(*vbatchv1.File)
	o.CreatedAt = 0
	return proto.Equal(o, f)
}

func (a *applyCtx) deleteFile(c *vbatchv1.DeleteFile) error {
	f, ok := a.s.Files[c.Id]
	if !ok || (c.Project != "" && f.Project != c.Project) {
		return Reject(ErrNotFound, "file %s", c.Id)
	}
	if UsedByLiveBatch(a.s, c.Id) {
		return Reject(ErrConflict, "file %s is used by a batch that is still running", c.Id)
	}
	delete(a.s.Files, c.Id)
	return nil
}

func (a *applyCtx) registerAgent(c *vbatchv1.RegisterAgent) error {
	ag := c.GetAgent()
	if ag.GetId() == "" {
		return Reject(ErrInvalid, "agent needs an id")
	}
	ag = proto.Clone(ag).(*vbatchv1.Agent)
	if ag.RegisteredAt == 0 {
		ag.RegisteredAt = a.sec()
	}
	a.s.Agents[ag.Id] = ag
	return nil
}

func (a *applyCtx) removeAgent(c *vbatchv1.RemoveAgent) error {
	if _, ok := a.s.Agents[c.AgentId]; !ok {
		return Reject(ErrNotFound, "agent %s", c.AgentId)
	}
	for _, b := range a.s.Batches {
		for _, ch := range b.Chunks {
			if ch.State == vbatchv1.ChunkState_CHUNK_STATE_LEASED && ch.Lease != nil && ch.Lease.AgentId == c.AgentId {
				endLease(ch)
			}
		}
	}
	delete(a.s.Agents, c.AgentId)
	return nil
}

func (a *applyCtx) drainAgent(c *vbatchv1.DrainAgent) error {
	ag, ok := a.s.Agents[c.AgentId]
	if !ok {
		return Reject(ErrNotFound, "agent %s", c.AgentId)
	}
	ag.Draining = true
	return nil
}

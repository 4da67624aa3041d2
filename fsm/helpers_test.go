package fsm

import "github.com/hashicorp/raft"

func rawLog(data []byte) *raft.Log { return &raft.Log{Index: 1, Type: raft.LogCommand, Data: data} }

package instance

import (
	"fmt"
	"strconv"
	"strings"
)

// Role is what an instance's PostgreSQL is doing now.
type Role string

// Roles. An instance whose PostgreSQL is not running has RoleNone.
const (
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
	RoleNone    Role = ""
)

// LSN is a position in the write-ahead log.
type LSN uint64

// String prints an LSN the way PostgreSQL does, such as 0/3000060.
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// MarshalText writes the PostgreSQL form.
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText reads the PostgreSQL form.
func (l *LSN) UnmarshalText(b []byte) error {
	hi, lo, ok := strings.Cut(string(b), "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	lw, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("instance: bad LSN %q", b)
	}
	*l = LSN(h<<32 | lw)
	return nil
}

// Standby is one replica connected to a primary, as the primary sees it.
type Standby struct {
	Name      string `json:"name"`
	State     string `json:"state"`     // streaming, catchup, ...
	SyncState string `json:"syncState"` // sync, quorum, potential, async
	FlushLSN  LSN    `json:"flushLSN"`
}

// Status is an instance as its manager observes it.
type Status struct {
	Name string `json:"name"`
	// Running reports whether PostgreSQL accepts connections.
	Running bool `json:"running"`
	Role    Role `json:"role"`
	// Fenced instances keep PostgreSQL stopped until told to follow a primary or unfence.
	Fenced   bool  `json:"fenced"`
	Timeline int64 `json:"timeline,omitempty"`
	// WAL is how far this instance's WAL goes: the flushed position on a primary, the
	// greater of received and replayed on a replica.
	WAL         LSN `json:"wal"`
	ReceivedLSN LSN `json:"receivedLSN,omitempty"`
	ReplayedLSN LSN `json:"replayedLSN,omitempty"`
	// WALReceiver is the WAL receiver's state ("streaming", ...), empty when none runs.
	WALReceiver string `json:"walReceiver,omitempty"`
	// Upstream is the primary a replica is configured to follow.
	Upstream         string    `json:"upstream,omitempty"`
	SyncStandbyNames string    `json:"syncStandbyNames,omitempty"`
	Standbys         []Standby `json:"standbys,omitempty"`
	// Error says why PostgreSQL is not running or could not be read, when it is not.
	Error string `json:"error,omitempty"`
}

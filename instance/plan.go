package instance

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// startAction is how an instance whose PostgreSQL is not running starts.
type startAction int

const (
	// startInitPrimary: no data, and this instance is to be primary: initdb.
	startInitPrimary startAction = iota + 1
	// startClone: no data; copy the primary's with pg_basebackup and follow it.
	startClone
	// startPrimary: the data of a primary, and this instance is still the primary.
	startPrimary
	// startReplica: the data of a standby; follow the primary (or, when this instance is
	// the one to be promoted, replay what it has and wait for the promotion).
	startReplica
	// startRewind: the data of a primary, but another instance is primary now. What this
	// one wrote after the two diverged was never acknowledged; pg_rewind drops it.
	startRewind
)

func (a startAction) String() string {
	return map[startAction]string{startInitPrimary: "initdb", startClone: "clone", startPrimary: "primary",
		startReplica: "replica", startRewind: "rewind"}[a]
}

// errNoTarget means no instance is to be primary yet (a failover is deciding): nothing
// may start as primary, and nothing can be cloned.
var errNoTarget = errors.New("instance: no target primary yet; waiting")

// planStart decides how an instance starts from what it has on disk and which instance
// the Locator says is primary.
//
// Why a primary never starts as primary unless it is still the target: after a crash
// (kill -9, lost node) the operator may already have promoted a replica. Starting again
// as primary would make two primaries; starting with no target at all is forbidden for
// the same reason, so a former primary waits until the failover has decided.
func planStart(hasData, isStandby bool, self, target string) (startAction, error) {
	switch {
	case !hasData && target == self:
		return startInitPrimary, nil
	case !hasData && target == "":
		return 0, errNoTarget
	case !hasData:
		return startClone, nil
	case isStandby:
		return startReplica, nil
	case target == self:
		return startPrimary, nil
	case target == "":
		return 0, errNoTarget
	default:
		return startRewind, nil
	}
}

func ownerOf(path string) (uid, gid int, err error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("instance: stat %s: %w", path, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("instance: no owner for %s", path)
	}
	return int(sys.Uid), int(sys.Gid), nil
}

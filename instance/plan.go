package instance

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// String names the action for logs.
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

// divergedFrom reports whether a standby has left the primary's history: it is on
// timeline ourTLI at position ourLSN, and the primary is on primaryTLI, whose history
// file (empty for timeline 1) lists where each earlier timeline ended.
//
// Why it matters: after a failover that promoted a replica which lacked some WAL another
// standby had (possible with a synchronous number of two or more: only enough standbys
// to hold every acknowledged commit must answer, not all), that standby holds WAL past
// the point where the new primary's timeline forked. That WAL was never acknowledged,
// but PostgreSQL cannot stream the new timeline on top of it, so the standby waits
// forever. pg_rewind drops it, as for a former primary.
func divergedFrom(history string, primaryTLI, ourTLI int64, ourLSN LSN) (bool, error) {
	if ourTLI == primaryTLI {
		return false, nil
	}
	for _, line := range strings.Split(history, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") {
			continue
		}
		tli, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return false, fmt.Errorf("instance: timeline history line %q: %w", line, err)
		}
		if tli != ourTLI {
			continue
		}
		var end LSN
		if err := end.UnmarshalText([]byte(f[1])); err != nil {
			return false, err
		}
		return ourLSN > end, nil
	}
	// Our timeline is not in the primary's history at all: another branch.
	return true, nil
}

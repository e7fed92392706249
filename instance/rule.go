package instance

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// SyncMethod is how synchronous_standby_names counts standbys.
type SyncMethod string

// Sync methods: ANY n (quorum commit) or FIRST n (priority order).
const (
	SyncAny   SyncMethod = "any"
	SyncFirst SyncMethod = "first"
)

// SyncRule is a shard's synchronous replication rule.
type SyncRule struct {
	Method SyncMethod
	// Number of standbys that must confirm each commit; 0 means asynchronous.
	Number int
	// Required keeps commits waiting when too few standbys are connected, rather than
	// acknowledging them with fewer copies than Number.
	Required bool
}

// ParseSyncRule reads a rule written as "ANY 1", "FIRST 2" or "" (asynchronous), with
// required or not.
func ParseSyncRule(s string, required bool) (SyncRule, error) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return SyncRule{Required: required}, nil
	}
	if len(f) != 2 {
		return SyncRule{}, fmt.Errorf("instance: sync rule %q: want METHOD NUMBER", s)
	}
	n, err := strconv.Atoi(f[1])
	if err != nil || n < 0 {
		return SyncRule{}, fmt.Errorf("instance: sync rule %q: bad number", s)
	}
	m := SyncMethod(strings.ToLower(f[0]))
	if m != SyncAny && m != SyncFirst {
		return SyncRule{}, fmt.Errorf("instance: sync rule %q: method must be ANY or FIRST", s)
	}
	return SyncRule{Method: m, Number: n, Required: required}, nil
}

// SyncStandbyNames renders synchronous_standby_names for primary self.
//
// Why required lists every other member, connected or not: a commit must wait until
// Number standbys of the shard hold it. Listing only the connected ones would let a
// primary whose standbys all vanished acknowledge commits that exist nowhere else; with
// the full list, such commits wait instead. The list names members of the shard only,
// so a replica that was removed from the shard never holds commits up.
//
// Why preferred lists only the streaming ones, and fewer than Number when fewer stream:
// preferred trades that guarantee for availability, so the primary keeps committing
// with what it has, down to asynchronous when nothing streams.
//
// Names are double-quoted: instance names contain hyphens.
func SyncStandbyNames(rule SyncRule, self string, members, streaming []string) string {
	if rule.Number <= 0 {
		return ""
	}
	var names []string
	for _, m := range members {
		if m == self {
			continue
		}
		if rule.Required || slices.Contains(streaming, m) {
			names = append(names, m)
		}
	}
	n := rule.Number
	if !rule.Required {
		n = min(n, len(names))
	}
	if len(names) == 0 || n == 0 {
		return ""
	}
	quoted := make([]string, len(names))
	for i, name := range names {
		quoted[i] = `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
	}
	method := SyncAny
	if rule.Method == SyncFirst {
		method = SyncFirst
	}
	return fmt.Sprintf("%s %d (%s)", strings.ToUpper(string(method)), n, strings.Join(quoted, ", "))
}

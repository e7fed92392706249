// Package failover decides and carries out failovers and switchovers of a shard's
// PostgreSQL primary. The decisions are pure functions over what the instance managers
// report; the sequences call the managers through the Instance interface. The operator
// and the local shard harness (tests, `tally dev --instances 3`) drive this same code.
//
// The failover path, in order: PrimaryLost → Failover (fence the old primary, wait for
// every WAL receiver to stop, ChoosePromotion, promote, publish, repoint the replicas)
// → Converge (rejoin the old primary with pg_rewind when it returns).
package failover

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/tallyhq/tally/instance"
)

// Observation is one instance as last seen; Status is nil when its manager did not answer.
type Observation struct {
	Name   string
	Status *instance.Status
}

// PrimaryHealthy reports whether o is a running, unfenced primary.
func PrimaryHealthy(o Observation) bool {
	return o.Status != nil && o.Status.Running && !o.Status.Fenced && o.Status.Role == instance.RolePrimary
}

// PrimaryLost decides whether the primary has been gone long enough to fail over.
//
// Why a delay: a primary that restarts after a crash of postgres alone comes back in a
// second or two with nothing lost, and its manager restarts it on its own; failing over
// at the first missed probe would turn every blip into a promotion and a rewind. Why
// "unhealthy since", not "unhealthy now": a single answer is noise; only a continuous
// absence for delay counts. downSince is when the primary was first seen unhealthy in
// the current run of failures (zero if it is healthy now).
func PrimaryLost(primary Observation, downSince, now time.Time, delay time.Duration) bool {
	if PrimaryHealthy(primary) {
		return false
	}
	return !downSince.IsZero() && now.Sub(downSince) >= delay
}

// Choice is the replica to promote and why.
type Choice struct {
	Name   string
	Reason string
}

// Sentinel outcomes of ChoosePromotion; each means "do not promote now".
var (
	// ErrReceiversStreaming: some replica still streams, so some primary is alive.
	ErrReceiversStreaming = errors.New("failover: a replica is still streaming from a primary")
	// ErrNoQuorum: too few of the synchronous standbys answer to know that one of them
	// holds every acknowledged commit.
	ErrNoQuorum = errors.New("failover: synchronous quorum not intact")
	// ErrNoCandidate: no running replica can be promoted.
	ErrNoCandidate = errors.New("failover: no replica can be promoted")
)

// SyncSet is the set of standbys a commit by primary had to reach: with dataDurability
// required, every other member (see instance.SyncStandbyNames).
func SyncSet(members []string, primary string) []string {
	var s []string
	for _, m := range members {
		if m != primary {
			s = append(s, m)
		}
	}
	return s
}

// QuorumNeeded is how many members of a sync set of size n must answer, with rule
// ANY/FIRST k, before the most advanced of them is sure to hold every acknowledged
// commit.
//
// Why n-k+1: the primary acknowledged a commit only after k members of the set flushed
// it (ANY k: any k; FIRST k: the first k connected, still k of the set). If n-k+1 members
// answer, at most k-1 are missing, so for every acknowledged commit at least one member
// that has it answers. The WAL is one ordered stream per timeline, so the member that is
// furthest ahead has every commit any answering member has. The same count is safe for
// FIRST as for ANY, because which k members were "first" can change between two
// observations; counting the whole set never depends on a stale view.
func QuorumNeeded(n, k int) int {
	return max(n-k+1, 1)
}

// ChoosePromotion picks the replica to promote after the primary was lost (or fenced
// for a switchover; prefer names the wanted target, "" for none).
//
// Why these rules, in this order:
//   - Refuse while any replica's WAL receiver still streams: it is streaming from a live
//     primary, so the "lost" primary is not lost, or the cluster already has another
//     one. Promoting now is how split brains start.
//   - With dataDurability required, only members of the sync set may be promoted, and
//     only when QuorumNeeded of them answer: a replica that was not synchronous may miss
//     acknowledged commits, and so may every answering one if too few answer. Writes stay
//     down rather than lose a transfer a client was told succeeded.
//   - Among the candidates, the highest timeline first (a replica left on an older
//     timeline by an earlier failover may hold WAL the current history never had, so its
//     LSN means nothing), then the furthest WAL. A lagging replica is never chosen over
//     one that is ahead.
//   - prefer wins only a tie on both: a switchover never costs a commit.
//   - Remaining ties go to the lowest name, so every run decides the same.
func ChoosePromotion(rule instance.SyncRule, members []string, primary, prefer string, obs []Observation) (Choice, error) {
	var running []*instance.Status
	for _, o := range obs {
		if o.Name == primary || o.Status == nil || !o.Status.Running || o.Status.Fenced {
			continue
		}
		if o.Status.Role != instance.RoleReplica {
			return Choice{}, fmt.Errorf("%w: %s is running as %q", ErrReceiversStreaming, o.Name, o.Status.Role)
		}
		if o.Status.WALReceiver == "streaming" {
			return Choice{}, fmt.Errorf("%w: %s", ErrReceiversStreaming, o.Name)
		}
		running = append(running, o.Status)
	}
	candidates := running
	why := "most advanced replica"
	if rule.Required && rule.Number > 0 {
		set := SyncSet(members, primary)
		candidates = nil
		for _, s := range running {
			if slices.Contains(set, s.Name) {
				candidates = append(candidates, s)
			}
		}
		need := QuorumNeeded(len(set), rule.Number)
		if len(candidates) < need {
			return Choice{}, fmt.Errorf("%w: %d of the synchronous standbys %v answer, %d needed for %s %d",
				ErrNoQuorum, len(candidates), set, need, strings.ToUpper(string(rule.Method)), rule.Number)
		}
		why = fmt.Sprintf("most advanced of %d answering synchronous standbys (%d needed)", len(candidates), need)
	}
	if len(candidates) == 0 {
		return Choice{}, ErrNoCandidate
	}
	sort.SliceStable(candidates, func(i, j int) bool {
		a, b := candidates[i], candidates[j]
		switch {
		case a.Timeline != b.Timeline:
			return a.Timeline > b.Timeline
		case a.WAL != b.WAL:
			return a.WAL > b.WAL
		case (a.Name == prefer) != (b.Name == prefer):
			return a.Name == prefer
		default:
			return a.Name < b.Name
		}
	})
	best := candidates[0]
	return Choice{Name: best.Name, Reason: fmt.Sprintf("%s: timeline %d, WAL %s", why, best.Timeline, best.WAL)}, nil
}

// ReceiversStopped reports whether no answering replica other than primary still
// streams; the failover waits for it before choosing, so the choice sees final positions.
func ReceiversStopped(primary string, obs []Observation) bool {
	for _, o := range obs {
		if o.Name != primary && o.Status != nil && o.Status.Running && o.Status.WALReceiver == "streaming" {
			return false
		}
	}
	return true
}

// NeedsFollow reports whether an answering instance other than the primary must be told
// to follow it: it runs as a primary, is fenced, or streams from someone else.
//
// Why a fenced or running former primary is rejoined only through Follow: its manager
// rewinds it with pg_rewind first, dropping the commits it made after the histories
// diverged. Those were never acknowledged (the synchronous standbys never had them), so
// dropping them loses nothing a client was promised.
func NeedsFollow(primary string, o Observation) bool {
	if o.Name == primary || o.Status == nil {
		return false
	}
	s := o.Status
	switch {
	case s.Fenced:
		return true
	case s.Running && s.Role == instance.RolePrimary:
		return true
	case s.Running && s.Upstream != primary:
		return true
	}
	return false
}

// AdoptablePrimary finds the instance an interrupted failover already promoted: exactly
// one running, unfenced primary other than the lost one.
//
// Why adopt rather than promote again: promotion is not undoable. Once a replica has
// been promoted it may have acknowledged commits; promoting another one would fork the
// history and lose them. Two running primaries are never adopted: that needs a person.
func AdoptablePrimary(lost string, obs []Observation) (string, bool) {
	found := ""
	for _, o := range obs {
		if o.Name == lost || !PrimaryHealthy(o) {
			continue
		}
		if found != "" {
			return "", false
		}
		found = o.Name
	}
	return found, found != ""
}

package controllers

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/instance"
)

// shardCount is one existing shard as the scale-down decision sees it.
type shardCount struct {
	Index int32
	Name  string
	// Accounts is the shard's customer account count, counted just now; nil when it could
	// not be counted.
	Accounts *int64
}

// scaleDecision is the outcome of decideScaleDown.
type scaleDecision struct {
	// Keep is how many shards (indexes 0..Keep-1) the ledger must keep serving.
	Keep int32
	// Remove lists shards that may be deleted, highest index first.
	Remove []shardCount
	// Blocked lists shards above the desired count that must stay, and why.
	Blocked []string
}

// decideScaleDown decides which shards above the desired count may go.
//
// Why so careful: a shard's database is the only copy of its accounts' money. Removing a
// shard that holds even one account destroys money, so a shard goes only when a fresh
// count says it holds none. A count that failed is treated as "holds accounts": we would
// rather refuse a scale-down than guess.
//
// Why from the top: account and transaction ids carry their shard index, and the ledger
// serves shards 0..n-1 by position. A hole in that range would renumber shards, so shards
// are removed from the highest index down, stopping at the first one that must stay;
// everything below it stays too.
func decideScaleDown(desired int32, existing []shardCount) scaleDecision {
	sorted := append([]shardCount(nil), existing...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Index > sorted[j].Index })
	d := scaleDecision{Keep: desired}
	blockedAt := int32(-1)
	for _, s := range sorted {
		if s.Index < desired {
			continue
		}
		switch {
		case s.Accounts == nil:
			d.Blocked = append(d.Blocked, fmt.Sprintf("shard %s: its accounts could not be counted", s.Name))
		case *s.Accounts > 0:
			d.Blocked = append(d.Blocked, fmt.Sprintf("shard %s holds %d accounts", s.Name, *s.Accounts))
		case blockedAt < 0:
			d.Remove = append(d.Remove, s)
			continue
		default:
			d.Blocked = append(d.Blocked, fmt.Sprintf("shard %s is empty but a higher shard must stay", s.Name))
		}
		if blockedAt < 0 {
			blockedAt = s.Index
			d.Keep = s.Index + 1
		}
	}
	if blockedAt >= 0 {
		// Nothing below a blocked shard may go, even if counted empty.
		kept := d.Remove[:0]
		for _, s := range d.Remove {
			if s.Index > blockedAt {
				kept = append(kept, s)
			}
		}
		d.Remove = kept
	}
	return d
}

// rolloutInstance is one PostgreSQL instance as the rollout decision sees it.
type rolloutInstance struct {
	Name string
	// Outdated: its pod runs a spec older than the shard's.
	Outdated bool
	// Healthy: its pod is ready, its manager answers and, for a replica, it streams from
	// the primary.
	Healthy bool
	Primary bool
}

// rolloutStep is what decideRollout asks for next.
type rolloutStep int

const (
	rolloutDone rolloutStep = iota
	// rolloutWait: something is unhealthy; disrupt nothing until it recovers.
	rolloutWait
	// rolloutReplaceReplica: delete the named replica's pod; it comes back with the new
	// spec on the same volume and catches up.
	rolloutReplaceReplica
	// rolloutSwitchover: hand the primary role to the named, already updated replica.
	rolloutSwitchover
)

// decideRollout orders a rolling update of a shard's PostgreSQL pods: replicas first, one
// at a time, then a switchover to an updated replica, after which the old primary is an
// outdated replica like any other.
//
// Why this order: a replica's restart costs nothing but a moment of redundancy, while
// the primary's would stop writes; a switchover to an updated, streaming synchronous
// standby loses no acknowledged commit and pauses writes for about a second. Why one at a
// time and only when all are healthy: with ANY 1 of two standbys, taking one down while
// the other lags would leave writes waiting, and a shard that is already degraded must
// not be made worse by routine maintenance.
func decideRollout(instances []rolloutInstance) (rolloutStep, string) {
	var outdatedPrimary bool
	var outdatedReplica, updatedReplica string
	for _, in := range instances {
		if !in.Healthy {
			return rolloutWait, in.Name
		}
		switch {
		case in.Primary:
			outdatedPrimary = in.Outdated
		case in.Outdated && outdatedReplica == "":
			outdatedReplica = in.Name
		case !in.Outdated && updatedReplica == "":
			updatedReplica = in.Name
		}
	}
	switch {
	case outdatedReplica != "":
		return rolloutReplaceReplica, outdatedReplica
	case outdatedPrimary && updatedReplica != "":
		return rolloutSwitchover, updatedReplica
	case outdatedPrimary:
		return rolloutWait, "" // a single instance: nothing to switch over to
	}
	return rolloutDone, ""
}

// retireInput is a shard whose spec.instances shrank, as the retire decision sees it.
type retireInput struct {
	Rule instance.SyncRule
	// Leaving lists the instances beyond spec.instances that still have a pod or a volume.
	Leaving []string
	Primary string
	// PrimaryStatus is what the primary's manager reports; nil when it does not answer.
	PrimaryStatus *instance.Status
	// Replicas are the other instances of the spec, for a switchover target.
	Replicas []rolloutInstance
	// Seen: an earlier look found the primary no longer waiting for any leaving instance.
	Seen bool
	// Mark is the primary's WAL position at the look after that; zero when not taken yet.
	Mark instance.LSN
}

// retireStep is what decideRetire asks for next.
type retireStep int

const (
	retireDone retireStep = iota
	// retireWait: not yet safe; the reason says what is awaited.
	retireWait
	// retireSwitchover: the primary itself is leaving; hand its role to the named replica.
	retireSwitchover
	// retireDelete: delete the leaving instances' pods and volumes.
	retireDelete
)

// retireDecision is the outcome of decideRetire.
type retireDecision struct {
	Step   retireStep
	Target string // the switchover target
	Reason string // why it waits
	Seen   bool
	Mark   instance.LSN
}

// decideRetire decides when the instances beyond a shrunken spec.instances may go.
//
// Why not at once: the primary's manager learns the new shape from its ConfigMap some
// time after the spec changed, and until then it waits for the leaving instances as
// synchronous standbys, so one of them may hold the only copy of an acknowledged commit.
// And even after the primary stops waiting for them, commits acknowledged just before
// may be on leaving instances alone. So, in order:
//   - A leaving primary first hands its role to a healthy, streaming replica of the spec
//     (a switchover loses no acknowledged commit).
//   - The primary must be healthy and its synchronous_standby_names must name no leaving
//     instance.
//   - Then, at the next look, its WAL position is the mark: every commit acknowledged
//     while any of its processes still counted a leaving standby is below it (a look
//     later, not at once, because each walsender applies the new setting on its own).
//     Once Number standbys that stay have flushed past the mark, every such commit has
//     the copies the failover rules count on, and the leaving instances hold nothing
//     that matters. Without required durability no commit ever waited for a standby, so
//     nothing is awaited.
func decideRetire(in retireInput) retireDecision {
	if len(in.Leaving) == 0 {
		return retireDecision{Step: retireDone}
	}
	if slices.Contains(in.Leaving, in.Primary) {
		for _, r := range in.Replicas {
			if r.Healthy && !slices.Contains(in.Leaving, r.Name) {
				return retireDecision{Step: retireSwitchover, Target: r.Name}
			}
		}
		return retireDecision{Step: retireWait, Reason: fmt.Sprintf("primary %s is beyond spec.instances and no healthy replica of the spec can take over", in.Primary)}
	}
	st := in.PrimaryStatus
	if st == nil || !st.Running || st.Fenced || st.Role != instance.RolePrimary {
		return retireDecision{Step: retireWait, Reason: fmt.Sprintf("primary %s is not healthy", in.Primary)}
	}
	if in.Rule.Number <= 0 {
		return retireDecision{Step: retireDelete}
	}
	for _, name := range in.Leaving {
		if strings.Contains(st.SyncStandbyNames, `"`+name+`"`) {
			return retireDecision{Step: retireWait, Reason: fmt.Sprintf("primary %s still waits for %s as a synchronous standby", in.Primary, name)}
		}
	}
	if !in.Rule.Required {
		return retireDecision{Step: retireDelete}
	}
	if !in.Seen {
		return retireDecision{Step: retireWait, Seen: true, Reason: "waiting for the primary's new synchronous standbys to settle"}
	}
	if in.Mark == 0 {
		return retireDecision{Step: retireWait, Seen: true, Mark: st.WAL, Reason: "waiting for the remaining standbys to confirm the primary's WAL"}
	}
	caught := 0
	for _, s := range st.Standbys {
		if !slices.Contains(in.Leaving, s.Name) && s.FlushLSN >= in.Mark {
			caught++
		}
	}
	if caught < in.Rule.Number {
		return retireDecision{Step: retireWait, Seen: true, Mark: in.Mark,
			Reason: fmt.Sprintf("%d of the remaining standbys flushed past %s, %d needed", caught, in.Mark, in.Rule.Number)}
	}
	return retireDecision{Step: retireDelete, Seen: true, Mark: in.Mark}
}

// shardDeletion is what a deleted LedgerShard's finalizer may do.
type shardDeletion struct {
	// Release lets the deletion finish; otherwise the shard waits, and keeps serving.
	Release bool
	// Lost says the cluster must record the shard's index as lost before it is released:
	// its accounts go with its volumes.
	Lost bool
	// Wait says why the shard waits.
	Wait string
}

// shardDeletionFacts is what decideShardDeletion looks at.
type shardDeletionFacts struct {
	Shard   string
	Index   int32
	Policy  v1alpha1.DeletionPolicy
	Cluster string
	// ClusterLive: the cluster exists and is not being deleted.
	ClusterLive bool
	// Listed: the cluster's spec.shards still covers this index.
	Listed bool
	// Accounts is the last count of the shard's accounts; nil when unknown.
	Accounts *int64
	// RecordedLost: the cluster's status.lostShards holds this index.
	RecordedLost bool
}

// decideShardDeletion decides whether a deleted LedgerShard may go.
//
// Why a shard may always go once its cluster is gone or being deleted, or no longer lists
// it: deleting the cluster is the way to end a ledger, and under Retain its volumes and
// credentials are owned by nothing, so they stay whatever is deleted; a shard the cluster
// no longer lists was removed by a scale-down, which only ever removes empty shards.
//
// Why an empty shard may go: it holds no money. A count that failed is not "empty".
//
// Why a shard that holds accounts waits under Retain: its cluster still routes accounts
// to it, so deleting it by hand would take its instances away and the cluster would
// create it again on its retained volumes: an outage with nothing gained. It keeps
// serving, and the cluster says why (Degraded/DeletionBlocked).
//
// Why it may go under Delete only once the cluster has recorded it as lost: its volumes
// go with it, and a shard created again empty under the same index would answer "no such
// account" for accounts that existed. The record, in the cluster's status, keeps the
// cluster from creating it again until someone acknowledges the loss.
func decideShardDeletion(f shardDeletionFacts) shardDeletion {
	switch {
	case !f.ClusterLive || !f.Listed:
		return shardDeletion{Release: true}
	case f.Accounts != nil && *f.Accounts == 0:
		return shardDeletion{Release: true}
	}
	holds := "an unknown number of"
	if f.Accounts != nil {
		holds = fmt.Sprint(*f.Accounts)
	}
	if f.Policy.Resolved() == v1alpha1.DeletionPolicyRetain {
		return shardDeletion{Wait: fmt.Sprintf("shard %s holds %s accounts and cluster %s still lists it, so its deletion waits "+
			"and it keeps serving (deletionPolicy Retain); to remove it, scale the cluster below %d (refused while it holds "+
			"accounts), delete the cluster (its volumes are kept), or set deletionPolicy: Delete", f.Shard, holds, f.Cluster, f.Index)}
	}
	if !f.RecordedLost {
		return shardDeletion{Lost: true, Wait: fmt.Sprintf("shard %s holds %s accounts and goes with its volumes (deletionPolicy Delete); "+
			"waiting for cluster %s to record it as lost", f.Shard, holds, f.Cluster)}
	}
	return shardDeletion{Release: true, Lost: true}
}

// nodeReady reports whether a node's kubelet says it is Ready.
func nodeReady(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podStuckOnLostNode decides whether a pod is deleted for good by the operator: it is
// being deleted, grace has passed since its deadline to be gone, its node is missing or
// not Ready, and it is none of primaries (the shard's current and target primary: the
// instance its writes go to, or went to until a failover in flight decides).
//
// Why: a pod on a lost node is never confirmed dead, since only its kubelet can do that,
// so it stays Terminating forever (Kubernetes evicts it after its tolerations, 5 minutes
// by default, and then waits), its instance is never re-created, and rollouts that wait
// for it stall.
//
// Why it is safe: the instance is not a primary (a lost primary is failed over first,
// its manager being unreachable, and only then is its pod one to delete), so the instances left hold every acknowledged
// commit. Should the node come back, its instance manager finds it is not the target
// primary and follows the new one; and while it cannot, synchronous replication keeps an
// isolated former primary from acknowledging anything, its standbys following another.
//
// Why not a primary: with no replica to promote (a failover the quorum rule
// refuses), the lost primary's data is the only complete copy; a new pod on another node
// would compete with the old one for its volume. A person decides that case.
func podStuckOnLostNode(pod *corev1.Pod, node *corev1.Node, primaries []string, now time.Time, grace time.Duration) bool {
	if pod.DeletionTimestamp.IsZero() || slices.Contains(primaries, pod.Name) || now.Before(pod.DeletionTimestamp.Add(grace)) {
		return false
	}
	return node == nil || !nodeReady(node)
}

// drainCandidate is a replica as the drain decision sees it.
type drainCandidate struct {
	Name string
	// Healthy: ready, reachable, streaming, not fenced (instanceHealthy).
	Healthy bool
	// Schedulable: its node takes pods (not cordoned) and is Ready.
	Schedulable bool
}

// decideDrainSwitchover picks the replica to switch over to when the primary's node is
// cordoned, or "" for none.
//
// Why: kubectl drain cordons a node, then evicts its pods, and the primary's disruption
// budget allows no eviction of the primary, so a drain of its node would wait forever.
// Moving the role first lets the drain go on: the old primary becomes a replica, whose
// budget allows one at a time. The target must be healthy (a switchover to a replica that
// lags would wait or lose the quorum) and on a node that is not being drained too, or the
// next drain would move the role straight back.
func decideDrainSwitchover(primaryCordoned bool, replicas []drainCandidate) string {
	if !primaryCordoned {
		return ""
	}
	for _, r := range replicas {
		if r.Healthy && r.Schedulable {
			return r.Name
		}
	}
	return ""
}

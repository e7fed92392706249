package controllers

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/failover"
)

// Timing of failovers and switchovers run in the background.
const (
	// haJobTimeout bounds one failover or switchover: its own waits are bounded far
	// below this (the receivers' stop, the promotion), so this only ends a hung call.
	haJobTimeout = 5 * time.Minute
	// haJobPoll is how soon a shard with a failover or switchover in flight is looked at
	// again.
	haJobPoll = time.Second
)

// haJob is a failover or switchover of one shard running outside the reconcile that
// started it. Why: the sequence waits (for the old primary's WAL receivers to stop, for
// the promoted replica to report itself primary) for up to two minutes, and a reconcile
// that blocked that long would hold a worker and leave the shard's status unwritten;
// instead each reconcile looks at the job and requeues until it is done. The job writes
// only through the role publisher, which re-reads the shard for every status write, and
// shares no memory with the reconciles but its result, read after done is closed.
type haJob struct {
	what    string // "failover", or the switchover's reason
	done    chan struct{}
	primary string
	err     error
}

// startHAJob runs sequence for the shard in the background; pollHAJob reports it.
func (r *ShardReconciler) startHAJob(st *shardState, uid types.UID, what string, sequence func(context.Context) (string, error)) {
	job := &haJob{what: what, done: make(chan struct{})}
	r.haJobs.Store(uid, job)
	go func() {
		defer close(job.done)
		ctx, cancel := context.WithTimeout(context.Background(), haJobTimeout)
		defer cancel()
		job.primary, job.err = sequence(ctx)
	}()
	job.report(st)
}

// report says in st that the job is in flight, and when to look again.
func (j *haJob) report(st *shardState) {
	st.ha, st.haMsg = v1alpha1.ReasonSwitchingOver, j.what+" in progress"
	if j.what == "failover" {
		st.ha = v1alpha1.ReasonPrimaryUnreachable
	}
	st.requeue = haJobPoll
}

// pollHAJob looks at the shard's job, if any: in flight, it says so in st and reports
// true, so nothing else acts on the shard's roles meanwhile; done, it takes the result
// (the new primary, or why it failed) and forgets the job.
func (r *ShardReconciler) pollHAJob(uid types.UID, st *shardState) (inFlight bool, finished *haJob) {
	v, ok := r.haJobs.Load(uid)
	if !ok {
		return false, nil
	}
	job := v.(*haJob)
	select {
	case <-job.done:
		r.haJobs.Delete(uid)
		return false, job
	default:
		job.report(st)
		return true, nil
	}
}

// plannedSwitchover starts a switchover to target for a step of the reconcile path
// (what names the step in the message if it is refused).
func (r *ShardReconciler) plannedSwitchover(st *shardState, uid types.UID, target, what string) {
	fs := st.fs
	r.startHAJob(st, uid, what+" switchover to "+target, func(ctx context.Context) (string, error) {
		p, err := failover.Switchover(ctx, fs, target)
		if err != nil {
			return "", fmt.Errorf("%s switchover: %w", what, err)
		}
		return p, nil
	})
}

package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tallyhq/tally/instance"
)

// Bounds of the sequences.
const (
	// fenceTimeout bounds the call that tells the old primary to shut down cleanly in a
	// switchover.
	fenceTimeout = 5 * time.Second
	// lostFenceTimeout bounds the same call in a failover: it is best effort, since a lost
	// primary does not answer, and the detached replicas already keep it from
	// acknowledging anything.
	lostFenceTimeout = 2 * time.Second
	// DefaultReceiverWait bounds the wait for every WAL receiver to stop.
	DefaultReceiverWait = 30 * time.Second
	// pollInterval is how often a waiting step looks again.
	pollInterval = 100 * time.Millisecond
	// observeTimeout bounds one status call: a healthy manager answers in milliseconds,
	// and every look at a hung primary costs this much.
	observeTimeout = 2 * time.Second
	// promoteWait bounds the wait for the promoted replica to report itself primary.
	promoteWait = 90 * time.Second
)

// Instance is one instance manager as the sequences use it; *instance.Client is one.
type Instance interface {
	Status(ctx context.Context) (instance.Status, error)
	Promote(ctx context.Context) error
	Fence(ctx context.Context) error
	Follow(ctx context.Context, primary string) error
	Detach(ctx context.Context) error
}

// Publisher moves the primary role where clients and managers see it: in Kubernetes the
// role labels (so the -rw Service follows) and status.targetPrimary/currentPrimary; in a
// local shard, its locator and proxy. Primary("") withdraws the role from everyone.
type Publisher interface {
	Primary(ctx context.Context, name string) error
}

// Shard is what the sequences act on.
type Shard struct {
	Rule instance.SyncRule
	// Members are the instance names in a stable order.
	Members   []string
	Instances map[string]Instance
	// Primary is the current (or just lost) primary.
	Primary   string
	Publisher Publisher
	// Event records each step; it may be nil.
	Event func(Event)
	// ReceiverWait bounds the wait for WAL receivers to stop (DefaultReceiverWait if 0).
	ReceiverWait time.Duration
}

// Event is one step of a sequence. Warning marks a step that did not go as it should
// (a refusal, an unanswered call), which operators want to see first.
type Event struct {
	Reason, Message string
	Warning         bool
}

func (s *Shard) event(reason, format string, args ...any) {
	if s.Event != nil {
		s.Event(Event{Reason: reason, Message: fmt.Sprintf(format, args...)})
	}
}

func (s *Shard) warning(reason, format string, args ...any) {
	if s.Event != nil {
		s.Event(Event{Reason: reason, Message: fmt.Sprintf(format, args...), Warning: true})
	}
}

// Observe asks every instance for its status at once.
func (s *Shard) Observe(ctx context.Context) []Observation { return s.observe(ctx, "") }

// observe is Observe without asking skip: a lost primary would hold every look for
// observeTimeout.
func (s *Shard) observe(ctx context.Context, skip string) []Observation {
	obs := make([]Observation, len(s.Members))
	var wg sync.WaitGroup
	for i, name := range s.Members {
		obs[i].Name = name
		inst := s.Instances[name]
		if inst == nil || name == skip {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, observeTimeout)
			defer cancel()
			if st, err := inst.Status(cctx); err == nil {
				obs[i].Status = &st
			}
		}()
	}
	wg.Wait()
	return obs
}

// Failover replaces a lost primary and returns the new primary's name. Every step is
// an event. On an error before the promotion nothing was promoted, the role stays
// withdrawn (no instance takes writes), and the caller may try again later.
//
// Before it withdraws anything it checks that a promotion is possible right now: a
// failover that cannot finish would only take writes away from a primary that may come
// back. And if an earlier failover promoted a replica but was cut off before publishing
// it, that primary is adopted instead of promoting another.
//
// obs is the Observe that found the primary lost: looking again would cost another
// observeTimeout on a primary that does not answer.
func Failover(ctx context.Context, s *Shard, obs []Observation) (string, error) {
	old := s.Primary
	if name, ok := AdoptablePrimary(old, obs); ok {
		if err := s.Publisher.Primary(ctx, name); err != nil {
			return "", fmt.Errorf("failover: publish primary %s: %w", name, err)
		}
		s.Primary = name
		s.event("PrimaryAdopted", "%s already runs as primary (an earlier failover promoted it); publishing it", name)
		s.Converge(ctx, s.Observe(ctx))
		return name, nil
	}
	if _, err := ChoosePromotion(s.Rule, s.Members, old, "", s.onceDetached(old, obs)); err != nil {
		s.warning("FailoverRefused", "primary %s is lost, but no replica can be promoted safely now: %v", old, err)
		return "", err
	}
	s.event("FailoverStarted", "primary %s is lost; failing over", old)
	return s.replace(ctx, old, "", true)
}

// Switchover hands the primary role from the current primary to target with no
// acknowledged commit lost: the old primary shuts down cleanly, which first sends its
// standbys every WAL record it wrote, and then the most advanced synchronous standby
// (target, when it is as far as any) is promoted.
func Switchover(ctx context.Context, s *Shard, target string) (string, error) {
	if target == s.Primary {
		return target, nil
	}
	obs := s.Observe(ctx)
	var ts *instance.Status
	for _, o := range obs {
		if o.Name == target {
			ts = o.Status
		}
	}
	switch {
	case ts == nil:
		return "", fmt.Errorf("failover: switchover target %s does not answer", target)
	case !ts.Running || ts.Role != instance.RoleReplica || ts.WALReceiver != "streaming":
		return "", fmt.Errorf("failover: switchover target %s is not a streaming replica", target)
	}
	s.event("SwitchoverStarted", "switching the primary from %s to %s", s.Primary, target)
	return s.replace(ctx, s.Primary, target, false)
}

// replace moves the primary role from old to the best replica (prefer on a tie). lost
// says old is lost (a failover) rather than handing over (a switchover).
func (s *Shard) replace(ctx context.Context, old, prefer string, lost bool) (string, error) {
	if err := s.Publisher.Primary(ctx, ""); err != nil {
		return "", fmt.Errorf("failover: withdraw the primary role: %w", err)
	}
	s.event("PrimaryRoleWithdrawn", "no instance takes writes until a new primary is promoted")
	if lost {
		fenced := s.cutOff(ctx, old)
		defer fenced()
	} else {
		s.fence(ctx, old, fenceTimeout)
	}
	obs, err := s.waitReceiversStopped(ctx, old)
	if err != nil {
		return "", err
	}
	if lost {
		obs = detachedOnly(obs)
	}
	choice, err := ChoosePromotion(s.Rule, s.Members, old, prefer, obs)
	if err != nil {
		s.warning("PromotionRefused", "%v", err)
		return "", err
	}
	s.event("PromotionChosen", "promoting %s: %s", choice.Name, choice.Reason)
	if err := s.promote(ctx, choice.Name); err != nil {
		s.warning("PromotionFailed", "%s: %v", choice.Name, err)
		return "", err
	}
	if err := s.Publisher.Primary(ctx, choice.Name); err != nil {
		return "", fmt.Errorf("failover: publish primary %s: %w", choice.Name, err)
	}
	s.Primary = choice.Name
	s.event("Promoted", "%s is the primary", choice.Name)
	s.Converge(ctx, s.Observe(ctx))
	return choice.Name, nil
}

// fence tells old to shut down and stay down, waiting at most timeout for its answer.
func (s *Shard) fence(ctx context.Context, old string, timeout time.Duration) {
	inst := s.Instances[old]
	if inst == nil {
		return
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := inst.Fence(fctx); err != nil {
		s.warning("FenceUnanswered", "old primary %s did not answer the fence: %v", old, err)
		return
	}
	s.event("Fenced", "old primary %s is shut down and fenced", old)
}

// cutOff detaches every instance but old from its upstream and tells old to fence
// itself (best effort); it returns once every detach answered, and the returned func
// waits for the fence, which nothing before the promotion needs.
//
// Why detach: a primary that froze (a stopped process, a stalled disk) can wake up after
// the failover chose whom to promote. If a standby still followed it, it could get a
// commit acknowledged that the new primary never receives. A detached standby streams
// from nobody until Converge points it at the new primary, so the old primary cannot
// reach its synchronous quorum again; only detached standbys are counted for the
// promotion (detachedOnly).
func (s *Shard) cutOff(ctx context.Context, old string) (fenced func()) {
	var fence sync.WaitGroup
	fence.Go(func() { s.fence(ctx, old, lostFenceTimeout) })
	var wg sync.WaitGroup
	for _, name := range s.Members {
		inst := s.Instances[name]
		if name == old || inst == nil {
			continue
		}
		wg.Go(func() {
			dctx, cancel := context.WithTimeout(ctx, observeTimeout)
			defer cancel()
			if err := inst.Detach(dctx); err != nil {
				s.warning("DetachFailed", "%s did not detach from %s: %v", name, old, err)
				return
			}
			s.event("Detached", "%s streams from nobody until it follows the new primary", name)
		})
	}
	wg.Wait()
	return fence.Wait
}

// onceDetached is obs as the promotion will see it after cutOff. When commits need
// synchronous standbys, a standby still streaming from the lost primary is no sign that
// a promotion would be unsafe: the failover detaches it first, and a primary without its
// standbys cannot acknowledge a commit, hung or alive. A hung primary keeps its
// connections open, so its standbys stream on until their receiver timeout; waiting for
// that cost writes several seconds more. Without that rule only the fence stops the old
// primary, so a streaming standby means it may be alive, and the failover waits.
func (s *Shard) onceDetached(old string, obs []Observation) []Observation {
	if !s.Rule.Required || s.Rule.Number == 0 {
		return obs
	}
	out := slices.Clone(obs)
	for i, o := range out {
		if o.Status != nil && o.Status.Role == instance.RoleReplica && o.Status.Upstream == old {
			st := *o.Status
			st.Upstream, st.WALReceiver = "", ""
			out[i].Status = &st
		}
	}
	return out
}

// detachedOnly keeps the observations of replicas that stream from nobody; the others
// count as not answering.
func detachedOnly(obs []Observation) []Observation {
	out := make([]Observation, len(obs))
	for i, o := range obs {
		out[i].Name = o.Name
		if o.Status != nil && (o.Status.Role != instance.RoleReplica || o.Status.Upstream == "") {
			out[i].Status = o.Status
		}
	}
	return out
}

func (s *Shard) waitReceiversStopped(ctx context.Context, old string) ([]Observation, error) {
	wait := s.ReceiverWait
	if wait <= 0 {
		wait = DefaultReceiverWait
	}
	deadline := time.Now().Add(wait)
	for {
		obs := s.observe(ctx, old)
		if ReceiversStopped(old, obs) {
			s.event("ReceiversStopped", "no replica streams from %s any more", old)
			return obs, nil
		}
		if time.Now().After(deadline) {
			s.warning("ReceiversStillStreaming", "replicas still stream after %s; the old primary may be alive, not failing over", wait)
			return nil, fmt.Errorf("%w after %s", ErrReceiversStreaming, wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

func (s *Shard) promote(ctx context.Context, name string) error {
	inst := s.Instances[name]
	if inst == nil {
		return fmt.Errorf("failover: no client for %s", name)
	}
	if err := inst.Promote(ctx); err != nil {
		return err
	}
	deadline := time.Now().Add(promoteWait)
	for {
		st, err := inst.Status(ctx)
		if err == nil && st.Running && st.Role == instance.RolePrimary {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("failover: promoted replica never reported itself primary")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// Converge tells every answering instance that is not following the primary to follow
// it: replicas after a promotion, and a former primary when it returns (its manager
// rewinds it first). obs is a fresh Observe; instances that do not answer are left for
// a later call.
func (s *Shard) Converge(ctx context.Context, obs []Observation) {
	for _, o := range obs {
		if !NeedsFollow(s.Primary, o) {
			continue
		}
		if err := s.Instances[o.Name].Follow(ctx, s.Primary); err != nil {
			s.warning("FollowFailed", "%s could not follow %s: %v", o.Name, s.Primary, err)
			continue
		}
		s.event("Following", "%s follows %s", o.Name, s.Primary)
	}
}

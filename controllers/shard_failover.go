package controllers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/failover"
	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/pki"
)

// Timing of the failover step.
const (
	// DefaultFailoverDelay is how long a primary must stay unhealthy before a failover:
	// long enough for its manager to restart a crashed postgres, short enough that a hung
	// primary costs under 15 s of writes.
	DefaultFailoverDelay = 5 * time.Second
	// failoverRetry is how soon a refused or failed failover or switchover is retried.
	failoverRetry = 5 * time.Second
	// haResync is how often a healthy shard's instances are observed again: the time a
	// primary that hangs without its pod changing may go unnoticed.
	haResync = 2 * time.Second
)

// InstanceDialer returns a client for one instance's manager; an error means it cannot
// be reached now (no pod IP, no token).
type InstanceDialer func(ctx context.Context, shard *v1alpha1.LedgerShard, pod *corev1.Pod) (failover.Instance, error)

// StatusAPIDialer reaches instance managers at their pod IP with the shard's status
// token: how the operator talks to them inside the cluster.
func StatusAPIDialer(c client.Client) InstanceDialer {
	return func(ctx context.Context, shard *v1alpha1.LedgerShard, pod *corev1.Pod) (failover.Instance, error) {
		if pod.Status.PodIP == "" {
			return nil, fmt.Errorf("pod %s has no IP yet", pod.Name)
		}
		var secret corev1.Secret
		if err := c.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: specs.SecretStatusToken(shard.Name)}, &secret); err != nil {
			return nil, fmt.Errorf("status token of %s: %w", shard.Name, err)
		}
		if !shard.Spec.TLS.Enabled() {
			url := "http://" + pod.Status.PodIP + ":" + strconv.Itoa(specs.StatusPort)
			return instance.NewClient(url, string(secret.Data[specs.StatusTokenKey]), nil), nil
		}
		roots, err := shardRoots(ctx, c, shard)
		if err != nil {
			return nil, err
		}
		// Dialled by IP (a pod's DNS name may lag), verified by the name its certificate holds.
		url := "https://" + pod.Status.PodIP + ":" + strconv.Itoa(specs.StatusPort)
		verify := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: specs.InstanceHost(shard, pod.Name)}
		return instance.NewClient(url, string(secret.Data[specs.StatusTokenKey]), verify), nil
	}
}

// shardRoots is the CA of the shard's server certificate (ca.crt of its Secret, whoever
// issued it) as a pool, for verifying the shard's servers.
func shardRoots(ctx context.Context, c client.Client, shard *v1alpha1.LedgerShard) (*x509.CertPool, error) {
	var secret corev1.Secret
	if err := c.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: specs.SecretTLS(shard.Name)}, &secret); err != nil {
		return nil, fmt.Errorf("the CA of %s: %w", shard.Name, err)
	}
	return pki.Pool(secret.Data[corev1.ServiceAccountRootCAKey])
}

// SyncRule is the instance managers' form of a shard's synchronous replication spec.
func SyncRule(pg specs.Postgres) instance.SyncRule {
	return instance.SyncRule{
		Method: instance.SyncMethod(pg.SyncMethod), Number: int(pg.SyncNumber),
		Required: pg.Durability == v1alpha1.DurabilityRequired,
	}
}

// reconcileFailover is the operator's side of high availability, in the order it
// decides: observe every instance manager; while the primary is healthy, honour a
// requested switchover or bring stray instances back to following it; once the primary
// has been lost for FailoverDelay, fail over (package failover decides whom to promote
// and carries it out). A shard whose schema was never applied has never served, so
// there is nothing to fail over yet.
func (r *ShardReconciler) reconcileFailover(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	if r.Instances == nil {
		return nil
	}
	fs, err := r.failoverShard(ctx, shard, st)
	if err != nil {
		return err
	}
	// a primary that does not answer is lost from when it was asked, not from when the
	// question timed out
	asked := time.Now()
	obs := fs.Observe(ctx)
	st.observe(obs)
	st.fs, st.observed = fs, obs
	// A failover or switchover in flight acts alone on the roles; when it is done, its
	// result is the shard's.
	inFlight, job := r.pollHAJob(shard.UID, st)
	if inFlight {
		return nil
	}
	if job != nil {
		if job.err != nil {
			st.ha, st.haMsg = v1alpha1.ReasonFailoverBlocked, job.err.Error()
			st.requeue = failoverRetry
			if job.what == "failover" {
				r.Metrics.observeFailover(shard.Namespace, shard.Name, "refused")
			}
			return nil
		}
		// The role moved: what this pass saw of the old primary's pod says nothing of the
		// new one's, and nothing may act on it (count its accounts, say) until a pass has
		// looked at the new primary.
		st.primary, st.target, st.primaryReady = job.primary, job.primary, false
		if job.what == "failover" {
			st.lostSince = nil
			r.Metrics.observeFailover(shard.Namespace, shard.Name, "succeeded")
		}
		st.requeue = time.Second
		return nil
	}
	var primary failover.Observation
	for _, o := range obs {
		if o.Name == st.primary {
			primary = o
		}
	}
	st.requeue = haResync
	switch {
	case failover.PrimaryHealthy(primary):
		st.lostSince = nil
		// A rolling update moves the primary on its own; spec.primary waits for it. An
		// instance beyond spec.instances is on its way out (reconcileRetire), so a
		// spec.primary naming one is not followed.
		if want := shard.Spec.Primary; want != "" && want != st.primary && len(st.rolloutPending) == 0 &&
			specs.InSpec(shard.Name, want, specs.ResolvePostgres(shard.Spec.Postgres).Instances) {
			return r.switchover(shard, fs, st, want)
		}
		fs.Converge(ctx, obs)
		return nil
	case shard.Status.SchemaVersion == 0:
		return nil // never served: bootstrap, not failover
	}
	now := time.Now()
	if st.lostSince == nil {
		st.lostSince = &metav1.Time{Time: asked}
	}
	down := st.lostSince.Time
	delay := r.FailoverDelay
	if delay <= 0 {
		delay = DefaultFailoverDelay
	}
	if !failover.PrimaryLost(primary, down, now, delay) {
		st.ha, st.haMsg = v1alpha1.ReasonPrimaryUnreachable, fmt.Sprintf("primary %s unhealthy for %s; failing over after %s", st.primary, now.Sub(down).Round(time.Second), delay)
		st.requeue = delay - now.Sub(down)
		return nil
	}
	r.Metrics.observeFailover(shard.Namespace, shard.Name, "started")
	r.startHAJob(st, shard.UID, "failover", func(ctx context.Context) (string, error) { return failover.Failover(ctx, fs, obs) })
	return nil
}

func (r *ShardReconciler) switchover(shard *v1alpha1.LedgerShard, fs *failover.Shard, st *shardState, target string) error {
	if fs.Instances[target] == nil {
		st.ha, st.haMsg = v1alpha1.ReasonFailoverBlocked, fmt.Sprintf("spec.primary %s is not a reachable instance of this shard", target)
		return nil
	}
	r.plannedSwitchover(st, shard.UID, target, "spec.primary")
	return nil
}

// failoverShard gathers what the failover package acts on: the rule, the members and a
// client for every instance whose pod can be reached.
func (r *ShardReconciler) failoverShard(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) (*failover.Shard, error) {
	pg := specs.ResolvePostgres(shard.Spec.Postgres)
	// The sequence may outlive this reconcile (a failover or switchover job): it gets a
	// copy of the shard, never the object this reconcile goes on to change.
	own := shard.DeepCopy()
	fs := &failover.Shard{
		Rule: SyncRule(pg), Primary: st.primary, Instances: map[string]failover.Instance{},
		Publisher: &rolePublisher{r: r, shard: own},
		Event: func(e failover.Event) {
			kind := corev1.EventTypeNormal
			if e.Warning {
				kind = corev1.EventTypeWarning
			}
			r.Recorder.Eventf(own, nil, kind, e.Reason, "Failover", "%s", e.Message)
		},
	}
	// Members are the spec's instances plus every instance pod that still exists. Why
	// the union: a primary lists the members it was started with in
	// synchronous_standby_names, which after a change of spec.instances may include pods
	// the spec no longer names, and one of them may hold the only copy of a commit. A
	// larger set only makes ChoosePromotion ask for more answers, never fewer.
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(shard.Namespace),
		client.MatchingLabels{specs.LabelShard: shard.Name, specs.LabelComponent: specs.ComponentPostgres}); err != nil {
		return nil, err
	}
	byName := map[string]*corev1.Pod{}
	for i := range pods.Items {
		byName[pods.Items[i].Name] = &pods.Items[i]
	}
	for n := int32(1); n <= pg.Instances; n++ {
		fs.Members = append(fs.Members, specs.InstanceName(shard.Name, n))
	}
	var extra []string
	for name := range byName {
		if !slices.Contains(fs.Members, name) {
			extra = append(extra, name)
		}
	}
	slices.Sort(extra)
	fs.Members = append(fs.Members, extra...)
	for _, name := range fs.Members {
		pod := byName[name]
		if pod == nil {
			continue
		}
		inst, err := r.Instances(ctx, shard, pod)
		if err != nil {
			continue // unreachable: it counts as not answering
		}
		fs.Instances[name] = inst
	}
	return fs, nil
}

// observe copies what the managers reported into the instances' status.
func (st *shardState) observe(obs []failover.Observation) {
	for i := range st.instances {
		in := &st.instances[i]
		for _, o := range obs {
			if o.Name != in.Name || o.Status == nil {
				continue
			}
			s := o.Status
			in.Reachable, in.Fenced, in.Timeline = true, s.Fenced, s.Timeline
			in.WAL, in.Streaming = s.WAL.String(), s.WALReceiver == "streaming"
			if s.Role == instance.RoleReplica {
				in.ReceivedLSN, in.ReplayedLSN = s.ReceivedLSN.String(), s.ReplayedLSN.String()
			}
		}
	}
}

// rolePublisher moves the primary role in Kubernetes: status.targetPrimary, which the
// instance managers read, and the role labels the -rw and -ro Services select on.
type rolePublisher struct {
	r     *ShardReconciler
	shard *v1alpha1.LedgerShard // a copy: its name, namespace and uid
}

// Primary publishes name as the primary, or withdraws the role from every instance when
// name is empty. The labels move first, so the -rw Service stops sending writes to the
// old primary at once; then the status, so no manager starts as primary meanwhile.
func (p *rolePublisher) Primary(ctx context.Context, name string) error {
	// Every pod of the shard, those beyond spec.instances on their way out included: a
	// retiring instance that was primary must not keep the label the -rw Service selects.
	var pods corev1.PodList
	if err := p.r.List(ctx, &pods, client.InNamespace(p.shard.Namespace),
		client.MatchingLabels{specs.LabelShard: p.shard.Name, specs.LabelComponent: specs.ComponentPostgres}); err != nil {
		return err
	}
	for _, pod := range pods.Items {
		role := v1alpha1.RoleReplica
		if pod.Name == name {
			role = v1alpha1.RolePrimary
		}
		if err := p.r.setRoleLabel(ctx, p.shard.Namespace, pod.Name, role); err != nil {
			return err
		}
	}
	// A patch of just these fields: reconciles write the status meanwhile, and a read
	// from the cache could be older than the last publish. Its test of the uid refuses a
	// shard deleted and created again under the same name.
	ops := []map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": p.shard.UID},
		{"op": "add", "path": "/status/targetPrimary", "value": name},
	}
	if name != "" {
		ops = append(ops, map[string]any{"op": "add", "path": "/status/currentPrimary", "value": name})
	}
	body, err := json.Marshal(ops)
	if err == nil {
		err = p.r.Status().Patch(ctx, p.shard.DeepCopy(), client.RawPatch(types.JSONPatchType, body))
	}
	if err != nil {
		return fmt.Errorf("publish primary %q: %w", name, err)
	}
	return nil
}

// setRoleLabel changes one pod's role label with a merge patch: a failover must move it
// even on a pod whose spec awaits a rollout, which the next apply leaves alone.
func (r *ShardReconciler) setRoleLabel(ctx context.Context, ns, name string, role v1alpha1.InstanceRole) error {
	var pod corev1.Pod
	if err := r.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	if pod.Labels[specs.LabelRole] == string(role) {
		return nil
	}
	before := pod.DeepCopy()
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[specs.LabelRole] = string(role)
	if err := r.Patch(ctx, &pod, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("label %s %s: %w", name, role, err)
	}
	return nil
}

// reconcileRollout replaces PostgreSQL pods that run an outdated spec, in the order
// decideRollout gives: replicas one at a time, then a switchover to an updated replica,
// after which the old primary is replaced as a replica. Each step is an Event; a pod is
// only ever deleted while every instance is healthy.
func (r *ShardReconciler) reconcileRollout(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	if st.fs == nil || len(st.rolloutPending) == 0 || st.ha != "" {
		return nil
	}
	var ins []rolloutInstance
	for _, in := range st.instances {
		primary := in.Name == st.primary
		ins = append(ins, rolloutInstance{
			Name: in.Name, Primary: primary, Outdated: slices.Contains(st.rolloutPending, in.Name),
			Healthy: instanceHealthy(in, primary),
		})
	}
	step, name := decideRollout(ins)
	switch step {
	case rolloutReplaceReplica:
		pod := &corev1.Pod{}
		pod.Name, pod.Namespace = name, shard.Namespace
		if err := r.Delete(ctx, pod); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("rollout: delete %s: %w", name, err)
		}
		r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "RolloutReplica", "Rollout", "replacing replica %s to run the new spec", name)
		st.requeue = time.Second
	case rolloutSwitchover:
		r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "RolloutSwitchover", "Rollout", "switching over to updated replica %s before replacing primary %s", name, st.primary)
		r.plannedSwitchover(st, shard.UID, name, "rollout")
	}
	return nil
}

// instanceHealthy: the instance's pod is ready and its manager answers, unfenced, and a
// replica streams from the primary.
func instanceHealthy(in v1alpha1.InstanceStatus, primary bool) bool {
	return in.Ready && in.Reachable && !in.Fenced && (primary || in.Streaming)
}

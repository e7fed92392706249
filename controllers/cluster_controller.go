package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/ledger/migrations"
)

// scaleDownRecheck is how soon a pending shard removal is looked at again.
const scaleDownRecheck = 10 * time.Second

// ClusterReconciler makes a LedgerCluster real: one LedgerShard per index and, once every
// shard's schema is current, the ledger service in front of them.
type ClusterReconciler struct {
	client.Client
	Recorder events.EventRecorder
	// Image is the operator's own image: the default for the ledger and migrations.
	Image string
	// Accounts counts a shard's accounts before it may be removed.
	Accounts AccountCounter
	// Metrics may be nil.
	Metrics *Metrics
}

// clusterState carries what the steps observed to the status update.
type clusterState struct {
	shards        []v1alpha1.LedgerShard // existing, by index
	serving       int32                  // shards the ledger serves
	blocked       []string
	lost          []int32  // status.lostShards: indexes deleted with their accounts
	deleting      []string // shards the cluster lists whose deletion waits, and why
	migrated      bool
	migrationFail string
	deployment    *appsv1.Deployment
	requeue       time.Duration
}

// +kubebuilder:rbac:groups=ledger.tally.dev,resources=ledgerclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=ledger.tally.dev,resources=ledgerclusters/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=ledger.tally.dev,resources=ledgerclusters/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=services;secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete

// Reconcile is the cluster's reconcile path, one named step after another.
func (r *ClusterReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	cluster := &v1alpha1.LedgerCluster{}
	if err := r.Get(ctx, req.NamespacedName, cluster); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !cluster.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	st := &clusterState{}
	steps := []struct {
		name string
		run  func(context.Context, *v1alpha1.LedgerCluster, *clusterState) error
	}{
		{"shards", r.reconcileShards},
		{"redis", r.reconcileRedis},
		{"ledger service", r.reconcileLedgerService},
		{"event relay", r.reconcileRelay},
		{"shard removal", r.reconcileShardRemoval},
	}
	for _, step := range steps {
		if err := step.run(ctx, cluster, st); err != nil {
			return ctrl.Result{}, reportStepError(ctx, r.Client, cluster, &cluster.Status.Conditions, step.name, err)
		}
	}
	return r.updateStatus(ctx, cluster, st)
}

func (r *ClusterReconciler) listShards(ctx context.Context, cluster *v1alpha1.LedgerCluster) ([]v1alpha1.LedgerShard, error) {
	var list v1alpha1.LedgerShardList
	if err := r.List(ctx, &list, client.InNamespace(cluster.Namespace), client.MatchingLabels{specs.LabelCluster: cluster.Name}); err != nil {
		return nil, err
	}
	shards := list.Items
	sort.Slice(shards, func(i, j int) bool { return shards[i].Spec.Index < shards[j].Spec.Index })
	return shards, nil
}

// reconcileShards applies one LedgerShard per index below spec.shards, and decides what
// may happen to shards above it (see decideScaleDown).
func (r *ClusterReconciler) reconcileShards(ctx context.Context, cluster *v1alpha1.LedgerCluster, st *clusterState) error {
	existing, err := r.listShards(ctx, cluster)
	if err != nil {
		return err
	}
	have := map[int32]bool{}
	for _, s := range existing {
		have[s.Spec.Index] = true
	}
	st.lost = observeLostShards(cluster, existing)
	for i := int32(0); i < cluster.Spec.Shards; i++ {
		if slices.Contains(st.lost, i) {
			continue // never created again empty: see decideShardDeletion
		}
		if s := shardAt(existing, i); s != nil && !s.DeletionTimestamp.IsZero() {
			if c := meta.FindStatusCondition(s.Status.Conditions, v1alpha1.ConditionDegraded); c != nil && c.Reason == v1alpha1.ReasonDeletionBlocked {
				st.deleting = append(st.deleting, c.Message)
			}
			continue
		}
		u, err := specs.Shard(cluster, i, r.Image)
		if err != nil {
			return err
		}
		if err := applyUnstructured(ctx, r.Client, u); err != nil {
			return err
		}
		if !have[i] {
			r.Recorder.Eventf(cluster, nil, corev1.EventTypeNormal, "ShardCreated", "Scale", "created shard %s", specs.ShardName(cluster.Name, i))
		}
	}
	if st.shards, err = r.listShards(ctx, cluster); err != nil {
		return err
	}
	var excess []shardCount
	for i := range st.shards {
		s := &st.shards[i]
		if s.Spec.Index < cluster.Spec.Shards {
			continue
		}
		c := shardCount{Index: s.Spec.Index, Name: s.Name}
		if n, err := r.Accounts.Count(ctx, s); err == nil {
			c.Accounts = &n
		}
		excess = append(excess, c)
	}
	d := decideScaleDown(cluster.Spec.Shards, excess)
	st.serving, st.blocked = d.Keep, d.Blocked
	if len(d.Blocked) > 0 {
		st.requeue = scaleDownRecheck // a count that failed may succeed next time
		prev := meta.FindStatusCondition(cluster.Status.Conditions, v1alpha1.ConditionDegraded)
		if prev == nil || prev.Reason != v1alpha1.ReasonScaleDownBlocked {
			r.Recorder.Eventf(cluster, nil, corev1.EventTypeWarning, v1alpha1.ReasonScaleDownBlocked, "Scale",
				"refusing to remove shards: %s", strings.Join(d.Blocked, "; "))
		}
	}
	return nil
}

// observeLostShards is the cluster's record of shards deleted with their accounts: the
// indexes recorded before that the cluster still lists (scaling below an index is how
// a person acknowledges its loss), and any listed shard now being deleted under
// deletionPolicy Delete that may hold accounts. The shard's finalizer waits for this
// record before it lets the shard go.
func observeLostShards(cluster *v1alpha1.LedgerCluster, existing []v1alpha1.LedgerShard) []int32 {
	var lost []int32
	for _, i := range cluster.Status.LostShards {
		if i < cluster.Spec.Shards {
			lost = append(lost, i)
		}
	}
	for i := range existing {
		s := &existing[i]
		if s.DeletionTimestamp.IsZero() || slices.Contains(lost, s.Spec.Index) {
			continue
		}
		d := decideShardDeletion(shardDeletionFacts{Index: s.Spec.Index, Policy: s.Spec.DeletionPolicy, ClusterLive: true,
			Listed: s.Spec.Index < cluster.Spec.Shards, Accounts: s.Status.Accounts})
		if d.Lost {
			lost = append(lost, s.Spec.Index)
		}
	}
	slices.Sort(lost)
	return lost
}

func shardAt(shards []v1alpha1.LedgerShard, index int32) *v1alpha1.LedgerShard {
	for i := range shards {
		if shards[i].Spec.Index == index {
			return &shards[i]
		}
	}
	return nil
}

// reconcileLedgerService deploys the ledger over the shards it serves, once every one of
// them reports the schema this operator's migrations bring. Until then an existing
// Deployment keeps its old shard map, so a new shard joins only when it is ready.
func (r *ClusterReconciler) reconcileLedgerService(ctx context.Context, cluster *v1alpha1.LedgerCluster, st *clusterState) error {
	want := migrations.Count()
	st.migrated = true
	for _, s := range st.shards {
		if s.Spec.Index >= st.serving {
			continue
		}
		if s.Status.SchemaVersion < want {
			st.migrated = false
			if c := meta.FindStatusCondition(s.Status.Conditions, v1alpha1.ConditionMigrationsApplied); c != nil && c.Reason == v1alpha1.ReasonMigrationFailed {
				st.migrationFail = s.Name + ": " + c.Message
			}
		}
	}
	if int32(len(st.shards)) < st.serving {
		st.migrated = false
	}
	if st.migrated {
		if err := apply(ctx, r.Client, specs.LedgerService(cluster)); err != nil {
			return err
		}
		ls, err := r.ledgerShards(ctx, cluster, st)
		if err != nil {
			return err
		}
		if err := apply(ctx, r.Client, specs.LedgerDeployment(cluster, ls, r.Image)); err != nil {
			return err
		}
	}
	var dep appsv1.Deployment
	err := r.Get(ctx, types.NamespacedName{Namespace: cluster.Namespace, Name: specs.LedgerName(cluster.Name)}, &dep)
	if err == nil {
		st.deployment = &dep
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}

// reconcileRelay runs the event relay while spec.events.kafka asks for one (once every
// shard it serves is migrated, as for the ledger), and removes it when it no longer does.
func (r *ClusterReconciler) reconcileRelay(ctx context.Context, cluster *v1alpha1.LedgerCluster, st *clusterState) error {
	if cluster.Spec.Events == nil || cluster.Spec.Events.Kafka == nil {
		dep := &appsv1.Deployment{}
		dep.Name, dep.Namespace = specs.RelayName(cluster.Name), cluster.Namespace
		return client.IgnoreNotFound(r.Delete(ctx, dep))
	}
	if !st.migrated {
		return nil
	}
	ls, err := r.ledgerShards(ctx, cluster, st)
	if err != nil {
		return err
	}
	return apply(ctx, r.Client, specs.RelayDeployment(cluster, ls, r.Image))
}

// reconcileRedis runs the managed Redis while spec.redis asks for one, and removes it
// when it no longer does.
func (r *ClusterReconciler) reconcileRedis(ctx context.Context, cluster *v1alpha1.LedgerCluster, _ *clusterState) error {
	if cluster.Spec.Redis != nil && cluster.Spec.Redis.Managed {
		// The password is made once: a new one would lock the running ledger out.
		err := r.Get(ctx, types.NamespacedName{Namespace: cluster.Namespace, Name: specs.RedisName(cluster.Name)}, &corev1.Secret{})
		if apierrors.IsNotFound(err) {
			err = r.Create(ctx, specs.RedisSecret(cluster, newPassword()), client.FieldOwner(FieldOwner))
			if apierrors.IsAlreadyExists(err) {
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("the managed Redis's password: %w", err)
		}
		if err := apply(ctx, r.Client, specs.RedisDeployment(cluster)); err != nil {
			return err
		}
		if err := apply(ctx, r.Client, specs.RedisService(cluster)); err != nil {
			return err
		}
		if cluster.Spec.NetworkPolicies {
			return apply(ctx, r.Client, specs.RedisNetworkPolicy(cluster))
		}
		return client.IgnoreNotFound(r.Delete(ctx, redisNetworkPolicy(cluster)))
	}
	dep := &appsv1.Deployment{}
	dep.Name, dep.Namespace = specs.RedisName(cluster.Name), cluster.Namespace
	svc := &corev1.Service{}
	svc.Name, svc.Namespace = dep.Name, dep.Namespace
	secret := &corev1.Secret{}
	secret.Name, secret.Namespace = dep.Name, dep.Namespace
	return errors.Join(client.IgnoreNotFound(r.Delete(ctx, dep)), client.IgnoreNotFound(r.Delete(ctx, svc)),
		client.IgnoreNotFound(r.Delete(ctx, secret)), client.IgnoreNotFound(r.Delete(ctx, redisNetworkPolicy(cluster))))
}

// redisNetworkPolicy names the managed Redis's NetworkPolicy, for deleting it.
func redisNetworkPolicy(cluster *v1alpha1.LedgerCluster) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{}
	np.Name, np.Namespace = specs.RedisName(cluster.Name), cluster.Namespace
	return np
}

// ledgerShards are the shards the ledger serves: which serve TLS, and a hash of the CAs
// of their certificates.
func (r *ClusterReconciler) ledgerShards(ctx context.Context, cluster *v1alpha1.LedgerCluster, st *clusterState) (specs.LedgerShards, error) {
	ls := specs.LedgerShards{Count: st.serving, Verify: make([]bool, st.serving)}
	sum := sha256.New()
	for _, s := range st.shards {
		if s.Spec.Index >= st.serving || !cluster.Spec.TLS.Enabled() || !s.Status.ServingTLS {
			continue
		}
		ls.Verify[s.Spec.Index] = true
		var secret corev1.Secret
		if err := r.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: specs.SecretTLS(s.Name)}, &secret); err != nil {
			return ls, fmt.Errorf("the certificate of %s: %w", s.Name, err)
		}
		fmt.Fprintf(sum, "%s\n%s\n", s.Name, secret.Data[corev1.ServiceAccountRootCAKey])
	}
	if slices.Contains(ls.Verify, true) {
		ls.CAHash = hex.EncodeToString(sum.Sum(nil)[:8])
	}
	return ls, nil
}

// reconcileShardRemoval deletes shards the scale-down decision let go, but only after the
// ledger has rolled out without them, so no ledger pod can still open an account there,
// and only if a count taken now still finds them empty.
func (r *ClusterReconciler) reconcileShardRemoval(ctx context.Context, cluster *v1alpha1.LedgerCluster, st *clusterState) error {
	var removable []*v1alpha1.LedgerShard
	for i := range st.shards {
		if st.shards[i].Spec.Index >= st.serving {
			removable = append(removable, &st.shards[i])
		}
	}
	if len(removable) == 0 {
		return nil
	}
	if !rolledOut(st.deployment) {
		st.requeue = scaleDownRecheck
		return nil
	}
	for _, s := range removable {
		n, err := r.Accounts.Count(ctx, s)
		if err != nil || n > 0 {
			st.requeue = scaleDownRecheck
			continue
		}
		if err := r.Delete(ctx, s, client.Preconditions{UID: &s.UID}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		r.Recorder.Eventf(cluster, nil, corev1.EventTypeNormal, "ShardRemoved", "Scale", "removed empty shard %s", s.Name)
	}
	return nil
}

// rolledOut reports whether every replica of the deployment runs its latest spec. With
// no deployment at all, no ledger pod can use any shard.
func rolledOut(d *appsv1.Deployment) bool {
	if d == nil {
		return true
	}
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want && d.Status.Replicas == want
}

func (r *ClusterReconciler) updateStatus(ctx context.Context, cluster *v1alpha1.LedgerCluster, st *clusterState) (ctrl.Result, error) {
	s := cluster.Status.DeepCopy()
	s.ObservedGeneration = cluster.Generation
	s.Shards = int32(len(st.shards))
	s.Selector = labels.SelectorFromSet(specs.PrimarySelector(cluster.Name)).String()
	s.ReadyShards = 0
	for _, sh := range st.shards {
		if meta.IsStatusConditionTrue(sh.Status.Conditions, v1alpha1.ConditionReady) {
			s.ReadyShards++
		}
	}
	set := func(t string, ok bool, reason, msg string) {
		setCondition(&s.Conditions, cluster.Generation, t, ok, reason, msg)
	}
	switch {
	case st.migrated:
		set(v1alpha1.ConditionMigrationsApplied, true, v1alpha1.ReasonMigrationsCurrent, fmt.Sprintf("every shard is at schema version %d", migrations.Count()))
	case st.migrationFail != "":
		set(v1alpha1.ConditionMigrationsApplied, false, v1alpha1.ReasonMigrationFailed, st.migrationFail)
	default:
		set(v1alpha1.ConditionMigrationsApplied, false, v1alpha1.ReasonWaitingForMigrations, "waiting for every shard's schema migration")
	}
	ledgerAvailable := st.deployment != nil && rolledOut(st.deployment) && st.deployment.Status.AvailableReplicas > 0
	if st.deployment != nil && st.deployment.Spec.Replicas != nil && *st.deployment.Spec.Replicas == 0 {
		ledgerAvailable = rolledOut(st.deployment) // scaled to zero on purpose
	}
	ready := s.ReadyShards >= cluster.Spec.Shards && st.migrated && ledgerAvailable
	switch {
	case ready:
		set(v1alpha1.ConditionReady, true, v1alpha1.ReasonReconciled, "every shard is ready and the ledger is available")
	case s.ReadyShards < cluster.Spec.Shards:
		set(v1alpha1.ConditionReady, false, v1alpha1.ReasonShardsNotReady, fmt.Sprintf("%d of %d shards ready", s.ReadyShards, cluster.Spec.Shards))
	case !st.migrated:
		set(v1alpha1.ConditionReady, false, v1alpha1.ReasonWaitingForMigrations, "waiting for schema migrations")
	default:
		set(v1alpha1.ConditionReady, false, v1alpha1.ReasonRollingOut, "the ledger service is not available yet")
	}
	if ready && len(st.blocked) == 0 && st.requeue == 0 {
		set(v1alpha1.ConditionProgressing, false, v1alpha1.ReasonAsExpected, "")
	} else {
		set(v1alpha1.ConditionProgressing, true, meta.FindStatusCondition(s.Conditions, v1alpha1.ConditionReady).Reason, "")
	}
	s.LostShards = st.lost
	switch {
	case len(st.lost) > 0:
		set(v1alpha1.ConditionDegraded, true, v1alpha1.ReasonShardLost, fmt.Sprintf("shard indexes %v were deleted with their volumes "+
			"(deletionPolicy Delete) while they may have held accounts, which are gone; they are not created again empty. "+
			"Restore them from a backup, or scale the cluster below the lowest to acknowledge the loss", st.lost))
	case len(st.deleting) > 0:
		set(v1alpha1.ConditionDegraded, true, v1alpha1.ReasonDeletionBlocked, strings.Join(st.deleting, "; "))
	case len(st.blocked) > 0:
		set(v1alpha1.ConditionDegraded, true, v1alpha1.ReasonScaleDownBlocked, strings.Join(st.blocked, "; "))
	case st.migrationFail != "":
		set(v1alpha1.ConditionDegraded, true, v1alpha1.ReasonMigrationFailed, st.migrationFail)
	default:
		set(v1alpha1.ConditionDegraded, false, v1alpha1.ReasonAsExpected, "")
	}
	r.Metrics.observeCluster(cluster.Namespace, cluster.Name, s.Shards, s.ReadyShards, len(st.blocked) > 0)
	result := ctrl.Result{RequeueAfter: st.requeue}
	unchanged := equality.Semantic.DeepEqual(*s, cluster.Status)
	cluster.Status = *s
	return writeStatus(ctx, r.Client, cluster, unchanged, result)
}

// SetupWithManager registers the reconciler and what it watches.
func (r *ClusterReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Recorder == nil || r.Image == "" || r.Accounts.DSN == nil {
		return errors.New("controllers: ClusterReconciler needs a Recorder, an Image and an AccountCounter")
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.LedgerCluster{}).
		Owns(&v1alpha1.LedgerShard{}).Owns(&appsv1.Deployment{}).Owns(&corev1.Service{}).
		// A shard's certificate Secret names the CA the ledger trusts (ledgerShards).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			cluster, ok := o.GetLabels()[specs.LabelCluster]
			if !ok || o.GetName() != specs.SecretTLS(o.GetLabels()[specs.LabelShard]) {
				return nil
			}
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: cluster}}}
		})).
		Named("ledgercluster").
		Complete(r)
}

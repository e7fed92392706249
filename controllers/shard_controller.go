package controllers

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/failover"
	"github.com/tallyhq/tally/ledger/migrations"
)

// passwordLength of generated database passwords; alphanumeric, so they are safe inside
// connection URLs.
const passwordLength = 32

// accountsRecount is how often a migrated shard's account count is refreshed in status.
const accountsRecount = 5 * time.Minute

// ShardReconciler makes a LedgerShard real: credentials, settings, services, one Pod and
// PVC per instance, disruption budgets, and the schema migration Job.
type ShardReconciler struct {
	client.Client
	Recorder events.EventRecorder
	// Accounts counts a migrated shard's accounts for its status; nil skips counting.
	Accounts *AccountCounter
	// Metrics may be nil.
	Metrics *Metrics
	// Instances reaches the instance managers; nil leaves failover alone (tests of
	// other steps).
	Instances InstanceDialer
	// FailoverDelay is how long a primary must be lost before a failover
	// (DefaultFailoverDelay when zero).
	FailoverDelay time.Duration
	// MaxConcurrentReconciles is how many shards are reconciled at once, so one shard's
	// slow failover never delays another's (one shard is still reconciled by one worker
	// at a time).
	MaxConcurrentReconciles int
	// OperatorNamespace is where the operator runs: its NetworkPolicies let the
	// operator's pods of that namespace in (empty: of any namespace).
	OperatorNamespace string
	// LostNodeGrace is how long past its deadline a pod on a lost node may stay
	// Terminating before it is deleted for good (DefaultLostNodeGrace when zero).
	LostNodeGrace time.Duration

	retireAt sync.Map // shard UID -> retireMark, while instances beyond the spec retire
	haJobs   sync.Map // shard UID -> *haJob, a failover or switchover in flight
}

// shardState carries what the steps observed to the status update.
type shardState struct {
	primary        string
	target         string // status.targetPrimary: "" while a failover decides
	ha             string // reason of a failover in progress or blocked, if any
	haMsg          string
	requeue        time.Duration
	fs             *failover.Shard // the instances as the failover step found them
	observed       []failover.Observation
	instances      []v1alpha1.InstanceStatus
	primaryReady   bool
	rolloutPending []string
	retire         string // why instances beyond spec.instances still wait to be deleted
	schemaVersion  int32
	migration      string // reason of MigrationsApplied
	migrationMsg   string
	accounts       *int64
	deletion       string       // why a deleted shard waits, if it does
	lostSince      *metav1.Time // status.primaryUnhealthySince
	// nodeSchedulable says, per instance, whether its node is Ready and not cordoned;
	// primaryCordoned, whether the primary's node is being drained.
	nodeSchedulable map[string]bool
	primaryCordoned bool
}

// +kubebuilder:rbac:groups=ledger.tally.dev,resources=ledgershards,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=ledger.tally.dev,resources=ledgershards/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=ledger.tally.dev,resources=ledgershards/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=pods;services;persistentvolumeclaims;configmaps;secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=cert-manager.io,resources=certificates,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=batch,resources=cronjobs,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete

// Reconcile is the shard's reconcile path, one named step after another.
func (r *ShardReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	shard := &v1alpha1.LedgerShard{}
	if err := r.Get(ctx, req.NamespacedName, shard); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	st := &shardState{primary: shard.Status.CurrentPrimary, target: shard.Status.TargetPrimary, schemaVersion: shard.Status.SchemaVersion,
		accounts: shard.Status.Accounts, lostSince: shard.Status.PrimaryUnhealthySince}
	if c := meta.FindStatusCondition(shard.Status.Conditions, v1alpha1.ConditionDegraded); c != nil && c.Reason == v1alpha1.ReasonDeletionBlocked {
		st.deletion = c.Message
	}
	if !shard.DeletionTimestamp.IsZero() {
		// Released: owner references take the children the policy lets go. Waiting: the
		// shard keeps running, every step below included.
		if released, err := r.reconcileDeletion(ctx, shard, st); released || err != nil {
			return ctrl.Result{}, err
		}
	} else {
		st.deletion = ""
	}
	if st.primary == "" {
		st.primary = specs.InstanceName(shard.Name, 1) // a new shard bootstraps on its first instance
		st.target = st.primary
	}
	steps := []struct {
		name string
		run  func(context.Context, *v1alpha1.LedgerShard, *shardState) error
	}{
		{"protection", r.reconcileProtection},
		{"secrets", r.reconcileSecrets},
		{"certificates", r.reconcileCertificates},
		{"instance access", r.reconcileInstanceAccess},
		{"config", r.reconcileConfig},
		{"services", r.reconcileServices},
		{"network policy", r.reconcileNetworkPolicy},
		{"instances", r.reconcileInstances},
		{"nodes", r.reconcileNodes},
		{"failover", r.reconcileFailover},
		{"drain", r.reconcileDrain},
		{"rollout", r.reconcileRollout},
		{"retire", r.reconcileRetire},
		{"disruption budgets", r.reconcilePDBs},
		{"migrations", r.reconcileMigrations},
		{"archive", r.reconcileArchive},
		{"accounts", r.reconcileAccounts},
	}
	for _, step := range steps {
		if err := step.run(ctx, shard, st); err != nil {
			return ctrl.Result{}, reportStepError(ctx, r.Client, shard, &shard.Status.Conditions, step.name, err)
		}
	}
	return r.updateStatus(ctx, shard, st)
}

// reconcileSecrets creates the superuser, application, replication, monitor (the
// operator's own), event relay and change data capture credentials once.
// They are never re-applied: a new password under a running database would lock it out.
func (r *ShardReconciler) reconcileSecrets(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	for _, s := range []struct{ name, user string }{
		{specs.SecretSuperuser(shard.Name), specs.Superuser},
		{specs.SecretApp(shard.Name), specs.AppUser},
		{specs.SecretReplication(shard.Name), specs.Replicator},
		{specs.SecretMonitor(shard.Name), specs.MonitorUser},
		{specs.SecretRelay(shard.Name), specs.RelayUser},
		{specs.SecretCDC(shard.Name), specs.CDCUser},
	} {
		err := r.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: s.name}, &corev1.Secret{})
		if err == nil {
			continue
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		if err := r.Create(ctx, specs.Secret(shard, s.name, s.user, newPassword()), client.FieldOwner(FieldOwner)); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
		r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "SecretCreated", "Create", "created credentials %s for %s", s.name, s.user)
	}
	err := r.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: specs.SecretStatusToken(shard.Name)}, &corev1.Secret{})
	if apierrors.IsNotFound(err) {
		err = r.Create(ctx, specs.StatusTokenSecret(shard, newPassword()), client.FieldOwner(FieldOwner))
		if err == nil {
			r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "SecretCreated", "Create", "created the instance managers' status token")
		}
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	}
	return err
}

// reconcileNetworkPolicy keeps the shard's NetworkPolicy while the cluster asks for
// one, and removes it when it no longer does.
func (r *ShardReconciler) reconcileNetworkPolicy(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	if shard.Spec.NetworkPolicies {
		return apply(ctx, r.Client, specs.ShardNetworkPolicy(shard, r.OperatorNamespace))
	}
	np := &networkingv1.NetworkPolicy{}
	np.Name, np.Namespace = specs.NetworkPolicyName(shard.Name), shard.Namespace
	return client.IgnoreNotFound(r.Delete(ctx, np))
}

// reconcileInstanceAccess gives the PostgreSQL pods their identity: a ServiceAccount
// that may read this LedgerShard, where the instance managers learn the target primary.
func (r *ShardReconciler) reconcileInstanceAccess(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	if err := apply(ctx, r.Client, specs.InstanceServiceAccount(shard)); err != nil {
		return err
	}
	if err := apply(ctx, r.Client, specs.InstanceRole(shard)); err != nil {
		return err
	}
	return apply(ctx, r.Client, specs.InstanceRoleBinding(shard))
}

// newPassword is 32 characters of base32 (about 160 random bits), safe in URLs.
func newPassword() string { return (rand.Text() + rand.Text())[:passwordLength] }

func (r *ShardReconciler) reconcileConfig(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	return apply(ctx, r.Client, specs.PostgresConfig(shard))
}

func (r *ShardReconciler) reconcileServices(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	for _, svc := range specs.Services(shard) {
		if err := apply(ctx, r.Client, svc); err != nil {
			return err
		}
	}
	return nil
}

// reconcileInstances makes one PVC and one Pod per instance. A pod whose spec changed is
// left running and reported: replacing PostgreSQL pods is a rolling update that must go
// replicas first, then a switchover (reconcileRollout).
func (r *ShardReconciler) reconcileInstances(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	pg := specs.ResolvePostgres(shard.Spec.Postgres)
	for n := int32(1); n <= pg.Instances; n++ {
		name := specs.InstanceName(shard.Name, n)
		if err := apply(ctx, r.Client, specs.PVC(shard, name)); err != nil {
			return err
		}
		// While status.targetPrimary is empty the role is withdrawn from every instance (a
		// failover or switchover decides); applying the last primary's label now would
		// send writes to it through the -rw Service.
		role := v1alpha1.RoleReplica
		if name == st.primary && st.target != "" {
			role = v1alpha1.RolePrimary
		}
		var pod corev1.Pod
		err := r.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: name}, &pod)
		switch {
		case apierrors.IsNotFound(err):
			if err := apply(ctx, r.Client, specs.Pod(shard, name, role)); err != nil {
				return err
			}
			r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "InstanceCreated", "Create", "created instance %s as %s", name, role)
		case err != nil:
			return err
		case pod.Annotations[specs.AnnotationSpecHash] == specs.PodSpecHash(shard, name):
			if err := apply(ctx, r.Client, specs.Pod(shard, name, role)); err != nil {
				return err
			}
		default:
			st.rolloutPending = append(st.rolloutPending, name)
		}
		ready := err == nil && podReady(&pod)
		st.instances = append(st.instances, v1alpha1.InstanceStatus{Name: name, Role: role, Ready: ready})
		if name == st.primary {
			st.primaryReady = ready
		}
	}
	return nil
}

// primaryAnswers: the primary's Pod is Ready and, when this pass observed the instances,
// the primary answered as a healthy primary.
// servingTLS says whether the shard serves TLS: once the primary runs with the
// certificate it does, and so does every instance after it (a rollout takes the
// primary last); it stays so while TLS is on.
func (st *shardState) servingTLS(shard *v1alpha1.LedgerShard) bool {
	return shard.Spec.TLS.Enabled() && (shard.Status.ServingTLS || st.primaryReady && st.primary != "" && !slices.Contains(st.rolloutPending, st.primary))
}

func (st *shardState) primaryAnswers() bool {
	if !st.primaryReady {
		return false
	}
	for _, o := range st.observed {
		if o.Name == st.primary {
			return failover.PrimaryHealthy(o)
		}
	}
	return st.observed == nil
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (r *ShardReconciler) reconcilePDBs(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	for _, pdb := range specs.PDBs(shard) {
		if err := apply(ctx, r.Client, pdb); err != nil {
			return err
		}
	}
	return nil
}

// reconcileMigrations brings the shard's schema to the version this operator's binary
// carries, with a Job once the primary is ready. A failed Job is reported, not replaced:
// its backoff limit already retried it, and a hot loop would hide the cause.
func (r *ShardReconciler) reconcileMigrations(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	want := migrations.Count()
	if st.schemaVersion >= want {
		st.migration = v1alpha1.ReasonMigrationsCurrent
		return nil
	}
	if !st.primaryReady {
		st.migration, st.migrationMsg = v1alpha1.ReasonPrimaryNotReady, "waiting for the primary to be ready"
		return nil
	}
	var job batchv1.Job
	err := r.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: specs.MigrationJobName(shard.Name, want)}, &job)
	if apierrors.IsNotFound(err) {
		if err := apply(ctx, r.Client, specs.MigrationJob(shard, want, st.servingTLS(shard))); err != nil {
			return err
		}
		r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "MigrationStarted", "Migrate", "migrating the schema to version %d", want)
		r.Metrics.observeMigration(shard.Namespace, shard.Name, "started")
		st.migration, st.migrationMsg = v1alpha1.ReasonMigrationRunning, fmt.Sprintf("migrating to version %d", want)
		return nil
	}
	if err != nil {
		return err
	}
	switch {
	case jobCondition(&job, batchv1.JobComplete):
		st.schemaVersion = want
		st.migration = v1alpha1.ReasonMigrationsCurrent
		r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "MigrationsApplied", "Migrate", "schema is at version %d", want)
		r.Metrics.observeMigration(shard.Namespace, shard.Name, "succeeded")
	case jobCondition(&job, batchv1.JobFailed):
		st.migration = v1alpha1.ReasonMigrationFailed
		st.migrationMsg = fmt.Sprintf("Job %s failed; see its pod logs, fix the cause, then delete the Job to retry", job.Name)
		if c := meta.FindStatusCondition(shard.Status.Conditions, v1alpha1.ConditionMigrationsApplied); c == nil || c.Reason != v1alpha1.ReasonMigrationFailed {
			r.Recorder.Eventf(shard, nil, corev1.EventTypeWarning, "MigrationFailed", "Migrate", "%s", st.migrationMsg)
			r.Metrics.observeMigration(shard.Namespace, shard.Name, "failed")
		}
	default:
		st.migration, st.migrationMsg = v1alpha1.ReasonMigrationRunning, fmt.Sprintf("migrating to version %d", want)
	}
	return nil
}

func jobCondition(job *batchv1.Job, t batchv1.JobConditionType) bool {
	for _, c := range job.Status.Conditions {
		if c.Type == t && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

// reconcileArchive keeps the shard's archiver (spec.retention): its volume and its
// CronJob, once the schema has what archival needs. Without retention the CronJob goes
// and the volume, which may hold the only copy of old history, stays.
func (r *ShardReconciler) reconcileArchive(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	if shard.Spec.Retention == nil {
		cj := &batchv1.CronJob{}
		cj.Name, cj.Namespace = specs.ArchiveName(shard.Name), shard.Namespace
		return client.IgnoreNotFound(r.Delete(ctx, cj))
	}
	if err := apply(ctx, r.Client, specs.ArchivePVC(shard)); err != nil {
		return err
	}
	if st.schemaVersion < migrations.Count() {
		return nil
	}
	return apply(ctx, r.Client, specs.ArchiveCronJob(shard, st.servingTLS(shard)))
}

// reconcileAccounts refreshes the informational account count of a migrated shard.
func (r *ShardReconciler) reconcileAccounts(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	if r.Accounts == nil || st.migration != v1alpha1.ReasonMigrationsCurrent {
		return nil
	}
	if !st.primaryAnswers() {
		// Counting would wait out its timeout on every pass, and hold this reconcile's
		// next observation of a lost primary (and so its failover) back by as much.
		st.accounts = nil
		return nil
	}
	n, err := r.Accounts.Count(ctx, shard)
	if err != nil {
		log.FromContext(ctx).Info("could not count accounts", "shard", shard.Name, "err", err.Error())
		st.accounts = nil
		return nil
	}
	st.accounts = &n
	return nil
}

func (r *ShardReconciler) updateStatus(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) (ctrl.Result, error) {
	s := shard.Status.DeepCopy()
	s.ObservedGeneration = shard.Generation
	s.CurrentPrimary, s.TargetPrimary, s.Instances, s.SchemaVersion, s.Accounts = st.primary, st.target, st.instances, st.schemaVersion, st.accounts
	s.PrimaryUnhealthySince = st.lostSince
	s.ServingTLS = st.servingTLS(shard)
	migrated := st.migration == v1alpha1.ReasonMigrationsCurrent
	allReady := true
	for _, in := range st.instances {
		allReady = allReady && in.Ready
	}
	set := func(t string, ok bool, reason, msg string) {
		setCondition(&s.Conditions, shard.Generation, t, ok, reason, msg)
	}
	if migrated {
		set(v1alpha1.ConditionMigrationsApplied, true, v1alpha1.ReasonMigrationsCurrent, fmt.Sprintf("schema version %d", st.schemaVersion))
	} else {
		set(v1alpha1.ConditionMigrationsApplied, false, st.migration, st.migrationMsg)
	}
	switch {
	case !st.primaryReady:
		set(v1alpha1.ConditionReady, false, v1alpha1.ReasonPrimaryNotReady, "instance "+st.primary+" is not ready")
	case !migrated:
		set(v1alpha1.ConditionReady, false, v1alpha1.ReasonWaitingForMigrations, st.migrationMsg)
	default:
		set(v1alpha1.ConditionReady, true, v1alpha1.ReasonReconciled, "primary ready, schema current")
	}
	switch {
	case st.ha == v1alpha1.ReasonPrimaryUnreachable:
		set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonFailingOver, st.haMsg)
	case st.ha == v1alpha1.ReasonSwitchingOver:
		set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonSwitchingOver, st.haMsg)
	case len(st.rolloutPending) > 0:
		set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonRollingOut, fmt.Sprintf("instances %v run an outdated spec", st.rolloutPending))
	case st.retire != "":
		set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonRetiringInstances, st.retire)
	case !allReady:
		set(v1alpha1.ConditionProgressing, true, v1alpha1.ReasonInstancesNotReady, "not every instance is ready")
	case !migrated:
		set(v1alpha1.ConditionProgressing, true, st.migration, st.migrationMsg)
	default:
		set(v1alpha1.ConditionProgressing, false, v1alpha1.ReasonAsExpected, "")
	}
	switch {
	case st.migration == v1alpha1.ReasonMigrationFailed:
		set(v1alpha1.ConditionDegraded, true, v1alpha1.ReasonMigrationFailed, st.migrationMsg)
	case st.ha == v1alpha1.ReasonFailoverBlocked:
		set(v1alpha1.ConditionDegraded, true, v1alpha1.ReasonFailoverBlocked, st.haMsg)
	case st.deletion != "":
		set(v1alpha1.ConditionDegraded, true, v1alpha1.ReasonDeletionBlocked, st.deletion)
	default:
		set(v1alpha1.ConditionDegraded, false, v1alpha1.ReasonAsExpected, "")
	}
	result := ctrl.Result{}
	if migrated && r.Accounts != nil {
		result.RequeueAfter = accountsRecount
	}
	if st.requeue > 0 && (result.RequeueAfter == 0 || st.requeue < result.RequeueAfter) {
		result.RequeueAfter = st.requeue
	}
	unchanged := equality.Semantic.DeepEqual(*s, shard.Status)
	shard.Status = *s
	return writeStatus(ctx, r.Client, shard, unchanged, result)
}

// SetupWithManager registers the reconciler and what it watches.
func (r *ShardReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Recorder == nil {
		return errors.New("controllers: ShardReconciler needs a Recorder")
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&v1alpha1.LedgerShard{}).
		Owns(&corev1.Pod{}).Owns(&corev1.PersistentVolumeClaim{}).Owns(&corev1.Service{}).
		Owns(&corev1.Secret{}).Owns(&corev1.ConfigMap{}).Owns(&policyv1.PodDisruptionBudget{}).
		Owns(&batchv1.Job{}).Owns(&batchv1.CronJob{}).Owns(&networkingv1.NetworkPolicy{}).Owns(&corev1.ServiceAccount{}).Owns(&rbacv1.Role{}).Owns(&rbacv1.RoleBinding{}).
		Named("ledgershard").
		WithOptions(controller.Options{MaxConcurrentReconciles: max(r.MaxConcurrentReconciles, 1)}).
		Complete(r)
}

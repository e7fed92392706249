package controllers_test

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/internal/pki"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/store"
)

var ctx = context.Background()

func int32p(v int32) *int32 { return &v }

func createCluster(t *testing.T, ns, name string, shards int32, mutate ...func(*v1alpha1.LedgerCluster)) *v1alpha1.LedgerCluster {
	t.Helper()
	c := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1alpha1.LedgerClusterSpec{Shards: shards}}
	for _, m := range mutate {
		m(c)
	}
	if err := k8s.Create(ctx, c); err != nil {
		t.Fatalf("create cluster: %v", err)
	}
	return c
}

func get(ns, name string, obj client.Object) error {
	return k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, obj)
}

func waitFor(t *testing.T, ns, name string, obj client.Object) {
	t.Helper()
	eventually(t, fmt.Sprintf("%T %s", obj, name), func() error { return get(ns, name, obj) })
}

// markPodReady plays the kubelet: the pod runs and passes its readiness probe.
func markPodReady(t *testing.T, ns, name string) {
	t.Helper()
	var pod corev1.Pod
	waitFor(t, ns, name, &pod)
	pod.Status.Phase = corev1.PodRunning
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	if err := k8s.Status().Update(ctx, &pod); err != nil {
		t.Fatalf("mark pod ready: %v", err)
	}
}

// finishJob plays the Job controller: the migration succeeded or failed.
func finishJob(t *testing.T, ns, name string, succeeded bool) {
	t.Helper()
	var job batchv1.Job
	waitFor(t, ns, name, &job)
	now := metav1.Now()
	job.Status.StartTime = &now
	if succeeded {
		job.Status.Succeeded = 1
		job.Status.CompletionTime = &now
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}
	} else {
		job.Status.Failed = 4
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, LastTransitionTime: now, Reason: "BackoffLimitExceeded"},
			{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, LastTransitionTime: now, Reason: "BackoffLimitExceeded"},
		}
	}
	if err := k8s.Status().Update(ctx, &job); err != nil {
		t.Fatalf("finish job: %v", err)
	}
}

// bringUpShard readies the shard's primary and completes its migration Job.
func bringUpShard(t *testing.T, ns, shard string) {
	t.Helper()
	markPodReady(t, ns, specs.InstanceName(shard, 1))
	finishJob(t, ns, specs.MigrationJobName(shard, migrations.Count()), true)
	eventually(t, "shard "+shard+" ready", func() error {
		var s v1alpha1.LedgerShard
		if err := get(ns, shard, &s); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(s.Status.Conditions, v1alpha1.ConditionReady) {
			return fmt.Errorf("conditions %+v", s.Status.Conditions)
		}
		return nil
	})
}

func condition(t *testing.T, ns, name, typ string) *metav1.Condition {
	t.Helper()
	var c v1alpha1.LedgerCluster
	if err := get(ns, name, &c); err != nil {
		t.Fatal(err)
	}
	return meta.FindStatusCondition(c.Status.Conditions, typ)
}

func waitCondition(t *testing.T, ns, name, typ string, status metav1.ConditionStatus, reason string) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s %s=%s/%s", name, typ, status, reason), func() error {
		var c v1alpha1.LedgerCluster
		if err := get(ns, name, &c); err != nil {
			return err
		}
		cond := meta.FindStatusCondition(c.Status.Conditions, typ)
		if cond == nil || cond.Status != status || cond.Reason != reason || cond.ObservedGeneration != c.Generation || c.Status.ObservedGeneration != c.Generation {
			return fmt.Errorf("generation %d, status %+v", c.Generation, c.Status)
		}
		return nil
	})
}

func controlledBy(obj client.Object, kind, name string) error {
	ref := metav1.GetControllerOf(obj)
	if ref == nil || ref.Kind != kind || ref.Name != name || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
		return fmt.Errorf("%s %s: controller reference %+v, want %s %s", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), ref, kind, name)
	}
	return nil
}

func TestClusterCreatesShardChildrenAndLedgerAfterMigrations(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "books", 1, func(c *v1alpha1.LedgerCluster) {
		c.Spec.Postgres.Parameters = map[string]v1alpha1.ParameterValue{"max_connections": "300"}
		c.Spec.Postgres.Synchronous = &v1alpha1.SynchronousSpec{Method: v1alpha1.SynchronousFirst}
	})
	shard := specs.ShardName("books", 0)
	var ls v1alpha1.LedgerShard
	waitFor(t, ns, shard, &ls)
	if err := controlledBy(&ls, "LedgerCluster", "books"); err != nil {
		t.Error(err)
	}
	if ls.Spec.Index != 0 || ls.Spec.Image != testImage || ls.Spec.Postgres.Instances != nil {
		t.Errorf("shard spec must carry the user's spec, no defaults: %+v", ls.Spec)
	}

	for n := int32(1); n <= specs.DefaultInstances; n++ {
		name := specs.InstanceName(shard, n)
		var pod corev1.Pod
		waitFor(t, ns, name, &pod)
		var pvc corev1.PersistentVolumeClaim
		waitFor(t, ns, name, &pvc)
		wantRole := "replica"
		if n == 1 {
			wantRole = "primary"
		}
		if pod.Labels[specs.LabelRole] != wantRole || pod.Spec.Containers[0].Image != specs.DefaultPostgresImage ||
			pod.Spec.InitContainers[0].Image != testImage || pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != name {
			t.Errorf("pod %s: labels %v, image %s", name, pod.Labels, pod.Spec.Containers[0].Image)
		}
		if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != specs.DefaultStorageSize {
			t.Errorf("pvc %s size %s", name, got.String())
		}
		if err := controlledBy(&pod, "LedgerShard", shard); err != nil {
			t.Error(err)
		}
		if len(pvc.OwnerReferences) > 0 { // deletionPolicy Retain, the default
			t.Errorf("pvc %s owned by %+v", name, pvc.OwnerReferences)
		}
	}
	for svc, role := range map[string]string{specs.ServiceRW(shard): "primary", specs.ServiceRO(shard): "replica", specs.ServiceR(shard): ""} {
		var s corev1.Service
		waitFor(t, ns, svc, &s)
		if s.Spec.Selector[specs.LabelRole] != role || s.Spec.Selector[specs.LabelShard] != shard {
			t.Errorf("service %s selector %v", svc, s.Spec.Selector)
		}
	}
	for _, name := range []string{specs.SecretSuperuser(shard), specs.SecretApp(shard), specs.SecretReplication(shard), specs.SecretRelay(shard), specs.SecretCDC(shard)} {
		var s corev1.Secret
		waitFor(t, ns, name, &s)
		if len(s.Data[corev1.BasicAuthPasswordKey]) != 32 || s.Type != corev1.SecretTypeBasicAuth {
			t.Errorf("secret %s: type %s, password of %d bytes", name, s.Type, len(s.Data[corev1.BasicAuthPasswordKey]))
		}
	}
	var cm corev1.ConfigMap
	waitFor(t, ns, specs.ConfigName(shard), &cm)
	if cm.Data["custom.conf"] != "max_connections = '300'\n" || cm.Data["synchronous"] != "FIRST 1" {
		t.Errorf("config %v", cm.Data)
	}
	var pdb policyv1.PodDisruptionBudget
	waitFor(t, ns, specs.PDBPrimary(shard), &pdb)
	waitFor(t, ns, specs.PDBReplicas(shard), &pdb)
	checkCertificates(t, ns, "books", shard)

	// No migration before the primary is ready, and no ledger before the migration.
	var job batchv1.Job
	time.Sleep(300 * time.Millisecond)
	if err := get(ns, specs.MigrationJobName(shard, migrations.Count()), &job); !apierrors.IsNotFound(err) {
		t.Fatalf("migration job before the primary is ready: %v", err)
	}
	markPodReady(t, ns, specs.InstanceName(shard, 1))
	waitFor(t, ns, specs.MigrationJobName(shard, migrations.Count()), &job)
	cmd := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " ")
	if cmd != "/tally migrate --shard 0 --grant-login tally_service --monitor-login tally_operator --relay-login tally_relayer" || job.Spec.Template.Spec.Containers[0].Image != testImage {
		t.Errorf("migration job runs %q in %s", cmd, job.Spec.Template.Spec.Containers[0].Image)
	}
	var dep appsv1.Deployment
	if err := get(ns, specs.LedgerName("books"), &dep); !apierrors.IsNotFound(err) {
		t.Fatalf("ledger deployed before migrations: %v", err)
	}
	waitCondition(t, ns, "books", v1alpha1.ConditionMigrationsApplied, metav1.ConditionFalse, v1alpha1.ReasonWaitingForMigrations)

	finishJob(t, ns, job.Name, true)
	waitFor(t, ns, specs.LedgerName("books"), &dep)
	env := map[string]string{}
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	if !strings.Contains(env["TALLY_SHARD_URLS"], "@books-0-rw."+ns+".svc:5432/tally") || dep.Spec.Template.Spec.Containers[0].Image != testImage || *dep.Spec.Replicas != 2 {
		t.Errorf("ledger deployment: env %v image %s", env, dep.Spec.Template.Spec.Containers[0].Image)
	}
	// The primary serves TLS, so the ledger and the migration require it, verified by the CA.
	if !strings.Contains(env["TALLY_SHARD_URLS"], "sslmode=verify-full&sslrootcert=/etc/tally/ca/books-0.crt") ||
		!slices.ContainsFunc(job.Spec.Template.Spec.Containers[0].Env, func(e corev1.EnvVar) bool {
			return e.Name == "DATABASE_URL" && strings.Contains(e.Value, "sslmode=verify-full")
		}) {
		t.Errorf("clients do not verify the shard: ledger %s", env["TALLY_SHARD_URLS"])
	}
	if err := controlledBy(&dep, "LedgerCluster", "books"); err != nil {
		t.Error(err)
	}
	var svc corev1.Service
	waitFor(t, ns, specs.LedgerName("books"), &svc)
	waitCondition(t, ns, "books", v1alpha1.ConditionMigrationsApplied, metav1.ConditionTrue, v1alpha1.ReasonMigrationsCurrent)
	waitCondition(t, ns, "books", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonRollingOut)

	// The Deployment controller's part: the ledger is available.
	dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2}
	if err := k8s.Status().Update(ctx, &dep); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "books", v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReconciled)
	waitCondition(t, ns, "books", v1alpha1.ConditionProgressing, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	waitCondition(t, ns, "books", v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
	expectEvent(t, ns, "MigrationsApplied")
	if v := metricValue(t, "tally_operator_cluster_ready_shards", ns); v != 1 {
		t.Errorf("ready shards metric %v", v)
	}
	if v := metricValue(t, "tally_operator_migrations_total", ns); v < 2 { // started and succeeded
		t.Errorf("migrations metric %v", v)
	}

	// Status follows spec changes: a new generation is observed.
	update(t, ns, "books", &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) { c.Spec.Ledger.Replicas = int32p(3) })
	eventually(t, "deployment scaled", func() error {
		if err := get(ns, specs.LedgerName("books"), &dep); err != nil {
			return err
		}
		if *dep.Spec.Replicas != 3 {
			return fmt.Errorf("replicas %d", *dep.Spec.Replicas)
		}
		return nil
	})
	waitCondition(t, ns, "books", v1alpha1.ConditionReady, metav1.ConditionFalse, v1alpha1.ReasonRollingOut)

	// spec.events.kafka runs the event relay, as each shard's relay login; without it, none.
	update(t, ns, "books", &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) {
		c.Spec.Events = &v1alpha1.EventsSpec{Kafka: &v1alpha1.KafkaSpec{Brokers: []string{"kafka.example:9092"}}}
	})
	var relay appsv1.Deployment
	waitFor(t, ns, specs.RelayName("books"), &relay)
	if err := controlledBy(&relay, "LedgerCluster", "books"); err != nil {
		t.Error(err)
	}
	c := relay.Spec.Template.Spec.Containers[0]
	if !slices.Contains(c.Args, "--brokers=kafka.example:9092") || *relay.Spec.Replicas != 2 || c.Image != testImage ||
		!slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "TALLY_RELAY_SHARD_URLS" && strings.Contains(e.Value, "postgres://tally_relayer:$(SHARD0_PASSWORD)@books-0-rw."+ns+".svc:5432/tally?sslmode=verify-full")
		}) ||
		!slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "SHARD0_PASSWORD" && e.ValueFrom.SecretKeyRef.Name == specs.SecretRelay(shard)
		}) {
		t.Errorf("relay: args %v env %+v", c.Args, c.Env)
	}
	update(t, ns, "books", &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) { c.Spec.Events = nil })
	eventually(t, "the relay removed", func() error {
		if err := get(ns, specs.RelayName("books"), &relay); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})

	assertReconcileWritesNothing(t, ns, "books")
}

// assertReconcileWritesNothing reconciles an unchanged cluster again and checks that no
// object's resourceVersion moved.
func assertReconcileWritesNothing(t *testing.T, ns, cluster string) {
	t.Helper()
	time.Sleep(500 * time.Millisecond) // let the running manager settle
	before := resourceVersions(t, ns)
	cr := &controllers.ClusterReconciler{Client: k8s, Recorder: discardRecorder{}, Image: testImage, Accounts: counter}
	sr := &controllers.ShardReconciler{Client: k8s, Recorder: discardRecorder{}, Instances: fakes.dial, FailoverDelay: testFailoverDelay}
	for range 2 {
		if _, err := cr.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: cluster}}); err != nil {
			t.Fatal(err)
		}
		var shards v1alpha1.LedgerShardList
		if err := k8s.List(ctx, &shards, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for _, s := range shards.Items {
			if _, err := sr.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: s.Name}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	after := resourceVersions(t, ns)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("reconciling an unchanged cluster wrote %s (resourceVersion %s -> %s)", k, v, after[k])
		}
	}
}

func resourceVersions(t *testing.T, ns string) map[string]string {
	t.Helper()
	rv := map[string]string{}
	lists := []client.ObjectList{&v1alpha1.LedgerClusterList{}, &v1alpha1.LedgerShardList{}, &corev1.PodList{}, &corev1.PersistentVolumeClaimList{},
		&corev1.ServiceList{}, &corev1.SecretList{}, &corev1.ConfigMapList{}, &policyv1.PodDisruptionBudgetList{}, &batchv1.JobList{}, &appsv1.DeploymentList{}}
	for _, l := range lists {
		if err := k8s.List(ctx, l, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		items, _ := meta.ExtractList(l)
		for _, it := range items {
			o := it.(client.Object)
			rv[fmt.Sprintf("%T/%s", l, o.GetName())] = o.GetResourceVersion()
		}
	}
	return rv
}

func expectEvent(t *testing.T, ns, reason string) {
	t.Helper()
	eventually(t, "event "+reason, func() error {
		var evs eventsv1.EventList
		if err := k8s.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == reason {
				return nil
			}
		}
		return errors.New("not recorded")
	})
}

// update changes an object as a user would: read it, change it, write it back, again
// if a controller wrote it in between.
func update[T client.Object](t *testing.T, ns, name string, obj T, change func(T)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := get(ns, name, obj); err != nil {
			return err
		}
		change(obj)
		return k8s.Update(ctx, obj)
	})
	if err != nil {
		t.Fatalf("update %s: %v", name, err)
	}
}

func scale(t *testing.T, ns, name string, shards int32) {
	t.Helper()
	c := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	sc := &autoscalingv1.Scale{Spec: autoscalingv1.ScaleSpec{Replicas: shards}}
	if err := k8s.SubResource("scale").Update(ctx, c, client.WithSubResourceBody(sc)); err != nil {
		t.Fatalf("scale: %v", err)
	}
}

func TestScaleSubresourceAddsAndRemovesShards(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "cash", 1, func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(1) })
	bringUpShard(t, ns, "cash-0")
	scale(t, ns, "cash", 2)
	var s v1alpha1.LedgerShard
	waitFor(t, ns, "cash-1", &s)
	if s.Spec.Index != 1 {
		t.Errorf("index %d", s.Spec.Index)
	}
	// The ledger keeps serving one shard until the new one is migrated.
	var dep appsv1.Deployment
	waitFor(t, ns, specs.LedgerName("cash"), &dep)
	if strings.Contains(dep.Spec.Template.Spec.Containers[0].Env[len(dep.Spec.Template.Spec.Containers[0].Env)-1].Value, "cash-1-rw") {
		t.Error("an unmigrated shard joined the ledger")
	}
	bringUpShard(t, ns, "cash-1")
	eventually(t, "ledger serves two shards", func() error {
		if err := get(ns, specs.LedgerName("cash"), &dep); err != nil {
			return err
		}
		if !strings.Contains(specsEnv(&dep, "TALLY_SHARD_URLS"), "cash-1-rw") {
			return errors.New("cash-1 not in the shard map")
		}
		return nil
	})
	var sc autoscalingv1.Scale
	eventually(t, "scale status", func() error {
		if err := k8s.SubResource("scale").Get(ctx, &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cash"}}, &sc); err != nil {
			return err
		}
		if sc.Status.Replicas != 2 || !strings.Contains(sc.Status.Selector, "ledger.tally.dev/cluster=cash") ||
			!strings.Contains(sc.Status.Selector, "ledger.tally.dev/role=primary") || !strings.Contains(sc.Status.Selector, "component=postgres") {
			return fmt.Errorf("scale status %+v", sc.Status)
		}
		return nil
	})

	// Shard 1 holds an account: scaling down is refused, nothing is deleted.
	db := pgtest.NewShardDB(t, 1)
	shardDSNs.Store(ns+"/cash-1", db.SuperDSN())
	st := store.New(db.AppPool(t, 2))
	ext, _ := ledger.NewAccountID(1)
	if _, _, _, err := st.RegisterAsset(ctx, "USD", 2, ext); err != nil {
		t.Fatal(err)
	}
	acc, _ := ledger.NewAccountID(1)
	if _, err := st.CreateAccount(ctx, ledger.Account{ID: acc, Owner: "o", Asset: "USD"}); err != nil {
		t.Fatal(err)
	}
	scale(t, ns, "cash", 1)
	waitCondition(t, ns, "cash", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonScaleDownBlocked)
	if c := condition(t, ns, "cash", v1alpha1.ConditionDegraded); !strings.Contains(c.Message, "holds 1 accounts") {
		t.Errorf("degraded message %q", c.Message)
	}
	expectEvent(t, ns, v1alpha1.ReasonScaleDownBlocked)
	time.Sleep(300 * time.Millisecond)
	if err := get(ns, "cash-1", &s); err != nil || !s.DeletionTimestamp.IsZero() {
		t.Fatalf("a shard holding accounts was deleted: %v", err)
	}
	if !strings.Contains(specsEnv(&dep, "TALLY_SHARD_URLS"), "cash-1-rw") {
		t.Error("the ledger stopped serving a shard that holds accounts")
	}

	// An empty shard goes, once the ledger has rolled out without it.
	empty := pgtest.NewShardDB(t, 1)
	shardDSNs.Store(ns+"/cash-1", empty.SuperDSN())
	eventually(t, "ledger drops the empty shard", func() error {
		if err := get(ns, specs.LedgerName("cash"), &dep); err != nil {
			return err
		}
		if strings.Contains(specsEnv(&dep, "TALLY_SHARD_URLS"), "cash-1-rw") {
			return errors.New("still serving cash-1")
		}
		return nil
	})
	if err := get(ns, "cash-1", &s); err != nil {
		t.Fatalf("shard removed before the ledger rolled out: %v", err)
	}
	dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2}
	if err := k8s.Status().Update(ctx, &dep); err != nil {
		t.Fatal(err)
	}
	eventually(t, "empty shard removed", func() error {
		if err := get(ns, "cash-1", &s); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	expectEvent(t, ns, "ShardRemoved")
	waitCondition(t, ns, "cash", v1alpha1.ConditionDegraded, metav1.ConditionFalse, v1alpha1.ReasonAsExpected)
}

func specsEnv(dep *appsv1.Deployment, name string) string {
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func TestFailedMigrationIsReported(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "bad", 1, func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(1) })
	markPodReady(t, ns, specs.InstanceName("bad-0", 1))
	finishJob(t, ns, specs.MigrationJobName("bad-0", migrations.Count()), false)
	waitCondition(t, ns, "bad", v1alpha1.ConditionMigrationsApplied, metav1.ConditionFalse, v1alpha1.ReasonMigrationFailed)
	waitCondition(t, ns, "bad", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonMigrationFailed)
	expectEvent(t, ns, "MigrationFailed")
	// Not retried in a loop: the failed Job stays, no second Job appears, no ledger.
	time.Sleep(500 * time.Millisecond)
	var jobs batchv1.JobList
	if err := k8s.List(ctx, &jobs, client.InNamespace(ns)); err != nil || len(jobs.Items) != 1 {
		t.Errorf("jobs: %d, %v", len(jobs.Items), err)
	}
	var dep appsv1.Deployment
	if err := get(ns, specs.LedgerName("bad"), &dep); !apierrors.IsNotFound(err) {
		t.Errorf("ledger deployed over a failed migration: %v", err)
	}
}

func TestCELRejectsBadSpecs(t *testing.T) {
	ns := newNamespace(t)
	bad := map[string]func(*v1alpha1.LedgerCluster){
		"zero shards":    func(c *v1alpha1.LedgerCluster) { c.Spec.Shards = 0 },
		"zero instances": func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(0) },
		"sync >= instances": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Synchronous = &v1alpha1.SynchronousSpec{Number: int32p(3)}
		},
		"sync >= explicit": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Instances = int32p(2)
			c.Spec.Postgres.Synchronous = &v1alpha1.SynchronousSpec{Number: int32p(2)}
		},
		"required, alone": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Instances = int32p(1)
			c.Spec.Postgres.Synchronous = &v1alpha1.SynchronousSpec{DataDurability: v1alpha1.DurabilityRequired}
		},
		"unknown method": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Synchronous = &v1alpha1.SynchronousSpec{Method: "all"}
		},
		"forbidden param": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Parameters = map[string]v1alpha1.ParameterValue{"fsync": "off"}
		},
		"param backslash": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Parameters = map[string]v1alpha1.ParameterValue{"work_mem": `8MB\`}
		},
		"param newline": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Parameters = map[string]v1alpha1.ParameterValue{"work_mem": "8MB\nfsync = off"}
		},
		"param quote": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Parameters = map[string]v1alpha1.ParameterValue{"log_statement": "all'"}
		},
		"param empty": func(c *v1alpha1.LedgerCluster) {
			c.Spec.Postgres.Parameters = map[string]v1alpha1.ParameterValue{"work_mem": ""}
		},
		"negative replicas":           func(c *v1alpha1.LedgerCluster) { c.Spec.Ledger.Replicas = int32p(-1) },
		"too many instances":          func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(10) },
		"no writers":                  batching(v1alpha1.BatchingSpec{Writers: int32p(0)}),
		"too many writers":            batching(v1alpha1.BatchingSpec{Writers: int32p(batcher.MaxWriters + 1)}),
		"batch too big":               batching(v1alpha1.BatchingSpec{MaxBatch: int32p(batcher.MaxBatchLimit + 1)}),
		"no readers":                  batching(v1alpha1.BatchingSpec{Readers: int32p(0)}),
		"too many readers":            batching(v1alpha1.BatchingSpec{Readers: int32p(batcher.MaxWriters + 1)}),
		"no linger":                   batching(v1alpha1.BatchingSpec{Linger: &metav1.Duration{}}),
		"linger too long":             batching(v1alpha1.BatchingSpec{Linger: &metav1.Duration{Duration: batcher.MaxLinger + time.Microsecond}}),
		"auth of nothing":             func(c *v1alpha1.LedgerCluster) { c.Spec.Auth = &v1alpha1.AuthSpec{} },
		"jwt without keys":            jwt(v1alpha1.JWTSpec{Issuer: "https://id.example", Audience: "tally"}),
		"jwt without issuer":          jwt(v1alpha1.JWTSpec{Audience: "tally", JWKSURL: "https://id.example/jwks"}),
		"jwt without aud":             jwt(v1alpha1.JWTSpec{Issuer: "https://id.example", JWKSURL: "https://id.example/jwks"}),
		"jwks in the clear":           jwt(v1alpha1.JWTSpec{Issuer: "https://id.example", Audience: "tally", JWKSURL: "http://id.example/jwks"}),
		"cert-manager without issuer": func(c *v1alpha1.LedgerCluster) { c.Spec.TLS = v1alpha1.TLSSpec{Mode: v1alpha1.TLSCertManager} },
		"issuer without cert-manager": func(c *v1alpha1.LedgerCluster) {
			c.Spec.TLS = v1alpha1.TLSSpec{Mode: v1alpha1.TLSOperator, IssuerRef: &v1alpha1.IssuerRef{Name: "x"}}
		},
		"odd role claim": jwt(v1alpha1.JWTSpec{Issuer: "https://id.example", Audience: "tally", JWKSURL: "https://id.example/jwks", RoleClaim: "a b"}),
		"tokens in two places": func(c *v1alpha1.LedgerCluster) {
			s := &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "t"}, Key: "t"}
			c.Spec.Auth = &v1alpha1.AuthSpec{TokensSecret: s}
			c.Spec.Ledger.TokensSecret = s
		},
	}
	i := 0
	for name, mutate := range bad {
		c := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("bad-%d", i)}, Spec: v1alpha1.LedgerClusterSpec{Shards: 1}}
		i++
		mutate(c)
		if err := k8s.Create(ctx, c); err == nil || !apierrors.IsInvalid(err) {
			t.Errorf("%s: accepted or wrong error: %v", name, err)
		}
	}
	// Every allow-listed kind of value is accepted: sizes, durations, fractions, words.
	ok := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "params-ok"}, Spec: v1alpha1.LedgerClusterSpec{Shards: 1}}
	ok.Spec.Postgres.Parameters = map[string]v1alpha1.ParameterValue{"work_mem": "8MB", "checkpoint_timeout": "15min", "checkpoint_completion_target": "0.9",
		"log_statement": "ddl", "wal_compression": "on", "log_min_duration_statement": "-1", "max_wal_size": "4 GB"}
	if err := k8s.Create(ctx, ok); err != nil {
		t.Errorf("ordinary parameter values refused: %v", err)
	} else if err := k8s.Delete(ctx, ok); err != nil {
		t.Error(err)
	}
	// The batcher's own bounds are accepted: the CRD and the service agree.
	limits := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "batching-limits"}, Spec: v1alpha1.LedgerClusterSpec{Shards: 1}}
	batching(v1alpha1.BatchingSpec{Writers: int32p(batcher.MaxWriters), MaxBatch: int32p(batcher.MaxBatchLimit),
		Linger: &metav1.Duration{Duration: batcher.MaxLinger}, Readers: int32p(batcher.MaxWriters)})(limits)
	if err := k8s.Create(ctx, limits); err != nil {
		t.Errorf("the batcher's limits refused: %v", err)
	} else if err := k8s.Delete(ctx, limits); err != nil {
		t.Error(err)
	}
	// A full auth section is accepted.
	authOK := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "auth-ok"}, Spec: v1alpha1.LedgerClusterSpec{Shards: 1}}
	jwt(v1alpha1.JWTSpec{Issuer: "https://id.example", Audience: "tally", JWKSURL: "https://id.example/jwks", RoleClaim: "scope",
		JWKSSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "keys"}, Key: "jwks.json"}})(authOK)
	authOK.Spec.Auth.TokensSecret = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "t"}, Key: "t"}
	authOK.Spec.Redis = &v1alpha1.RedisSpec{Address: "cache.example:6380", TLS: true,
		PasswordSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cache"}, Key: "password"}}
	authOK.Spec.Ledger.RateLimits = &v1alpha1.RateLimitsSpec{Writes: "600/m", Reads: "100/s:200"}
	if err := k8s.Create(ctx, authOK); err != nil {
		t.Errorf("a full auth, redis and rate limits section refused: %v", err)
	} else if err := k8s.Delete(ctx, authOK); err != nil {
		t.Error(err)
	}
	// Immutable fields stay immutable.
	sc := "fast"
	c := createCluster(t, ns, "ok", 1, func(c *v1alpha1.LedgerCluster) {
		c.Spec.Postgres.Storage = &v1alpha1.StorageSpec{StorageClass: &sc}
	})
	other := "slow"
	c.Spec.Postgres.Storage.StorageClass = &other
	if err := k8s.Update(ctx, c); err == nil || !strings.Contains(err.Error(), "storageClass is immutable") {
		t.Errorf("storageClass change: %v", err)
	}
	var s v1alpha1.LedgerShard
	waitFor(t, ns, "ok-0", &s)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error { // the controller writes the shard too
		if err := get(ns, "ok-0", &s); err != nil {
			return err
		}
		s.Spec.Index = 5
		return k8s.Update(ctx, &s)
	})
	if err == nil || !strings.Contains(err.Error(), "index is immutable") {
		t.Errorf("shard index change: %v", err)
	}
}

// batching returns a mutation that sets the ledger's batching.
func batching(b v1alpha1.BatchingSpec) func(*v1alpha1.LedgerCluster) {
	return func(c *v1alpha1.LedgerCluster) { c.Spec.Ledger.Batching = &b }
}

// discardRecorder drops events, for reconcilers called directly by a test.
type discardRecorder struct{}

func (discardRecorder) Eventf(_, _ k8sObject, _, _, _, _ string, _ ...interface{}) {}

// metricValue sums the operator's series of that name for one namespace.
func metricValue(t *testing.T, name, ns string) float64 {
	t.Helper()
	families, err := operatorMetrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "namespace" && l.GetValue() == ns {
					sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func jwt(j v1alpha1.JWTSpec) func(*v1alpha1.LedgerCluster) {
	return func(c *v1alpha1.LedgerCluster) { c.Spec.Auth = &v1alpha1.AuthSpec{JWT: &j} }
}

// checkCertificates: the cluster's CA (owned by the cluster, never mounted with its key)
// signs the shard's server certificate for its Services and instances; the instances
// mount it; and a certificate near its end is renewed.
func checkCertificates(t *testing.T, ns, cluster, shard string) {
	t.Helper()
	var caSecret, tlsSecret corev1.Secret
	waitFor(t, ns, specs.SecretCA(cluster), &caSecret)
	if err := controlledBy(&caSecret, "LedgerCluster", cluster); err != nil {
		t.Error(err)
	}
	waitFor(t, ns, specs.SecretTLS(shard), &tlsSecret)
	ca, err := pki.ParseCA(caSecret.Data["ca.crt"], caSecret.Data[specs.CAKey])
	if err != nil {
		t.Fatal(err)
	}
	roots, _ := pki.Pool(tlsSecret.Data["ca.crt"])
	cert, err := pki.ParseCertificate(tlsSecret.Data["tls.crt"])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{specs.ServiceRW(shard) + "." + ns + ".svc", specs.InstanceName(shard, 2) + "." + specs.ServiceInstances(shard) + "." + ns + ".svc"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("the server certificate for %s: %v", name, err)
		}
	}
	var pod corev1.Pod
	waitFor(t, ns, specs.InstanceName(shard, 1), &pod)
	if !slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == specs.SecretTLS(shard) }) {
		t.Errorf("the instance does not mount its certificate: %+v", pod.Spec.Volumes)
	}
	// A certificate with a sixth of its life left is replaced.
	old, key, err := ca.Issue(specs.CertNames(&v1alpha1.LedgerShard{ObjectMeta: metav1.ObjectMeta{Name: shard, Namespace: ns}}), 130*time.Minute, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tlsSecret.Data["tls.crt"], tlsSecret.Data["tls.key"] = old, key
	if err := k8s.Update(context.Background(), &tlsSecret); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the expiring certificate renewed", func() error {
		var s corev1.Secret
		if err := get(ns, specs.SecretTLS(shard), &s); err != nil {
			return err
		}
		if why := ca.Renew(s.Data["tls.crt"], specs.CertNames(&v1alpha1.LedgerShard{ObjectMeta: metav1.ObjectMeta{Name: shard, Namespace: ns}}), time.Now()); why != "" {
			return errors.New(why)
		}
		return nil
	})
}

package specs

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func i32(v int32) *int32 { return &v }

func TestResolvePostgres(t *testing.T) {
	size := resource.MustParse("5Gi")
	tests := []struct {
		name string
		in   v1alpha1.PostgresSpec
		want func(Postgres) bool
	}{
		{"empty takes every default", v1alpha1.PostgresSpec{}, func(p Postgres) bool {
			return p.Image == DefaultPostgresImage && p.Instances == 3 && p.SyncNumber == 1 && p.SyncMethod == v1alpha1.SynchronousAny &&
				p.Durability == v1alpha1.DurabilityRequired && p.StorageSize.String() == "10Gi"
		}},
		{"single instance has no standby to wait for", v1alpha1.PostgresSpec{Instances: i32(1)}, func(p Postgres) bool { return p.SyncNumber == 0 }},
		{"explicit values win", v1alpha1.PostgresSpec{Image: "pg:16", Instances: i32(5), Storage: &v1alpha1.StorageSpec{Size: &size},
			Synchronous: &v1alpha1.SynchronousSpec{Method: v1alpha1.SynchronousFirst, Number: i32(2), DataDurability: v1alpha1.DurabilityPreferred}},
			func(p Postgres) bool {
				return p.Image == "pg:16" && p.Instances == 5 && p.SyncNumber == 2 && p.SyncMethod == v1alpha1.SynchronousFirst &&
					p.Durability == v1alpha1.DurabilityPreferred && p.StorageSize.String() == "5Gi"
			}},
	}
	for _, tt := range tests {
		if got := ResolvePostgres(tt.in); !tt.want(got) {
			t.Errorf("%s: %+v", tt.name, got)
		}
	}
	if rule := SynchronousStandbyRule(ResolvePostgres(v1alpha1.PostgresSpec{})); rule != "ANY 1" {
		t.Errorf("rule %q", rule)
	}
}

func golden(t *testing.T, name string, v any) {
	t.Helper()
	got, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", name+".golden.json")
	if *update {
		if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./controllers/specs -update)", err)
	}
	if string(want) != string(got)+"\n" {
		t.Errorf("%s differs from %s; if the change is intended, run go test ./controllers/specs -update\n%s", name, path, got)
	}
}

func sampleShard() *v1alpha1.LedgerShard {
	s := &v1alpha1.LedgerShard{ObjectMeta: metav1.ObjectMeta{Name: "pay-0", Namespace: "money", UID: "uid-shard"},
		Spec: v1alpha1.LedgerShardSpec{Cluster: "pay", Index: 0, Image: "tally:1",
			Postgres: v1alpha1.PostgresSpec{Parameters: map[string]v1alpha1.ParameterValue{"work_mem": "8MB", "max_connections": "150"}}}}
	return s
}

func TestShardObjectsGolden(t *testing.T) {
	s := sampleShard()
	golden(t, "pod", Pod(s, "pay-0-1", v1alpha1.RolePrimary))
	golden(t, "pvc", PVC(s, "pay-0-1"))
	golden(t, "services", Services(s))
	golden(t, "pdbs", PDBs(s))
	golden(t, "config", PostgresConfig(s))
	golden(t, "migration-job", MigrationJob(s, 2, true))
	retained := sampleShard()
	retained.Spec.Retention = &v1alpha1.RetentionSpec{Months: 13, Storage: v1alpha1.ArchiveStorage{Size: resource.MustParse("50Gi")}}
	golden(t, "archive-cronjob", ArchiveCronJob(retained, true))
	golden(t, "archive-pvc", ArchivePVC(retained))
	one := sampleShard()
	one.Spec.Postgres.Instances = i32(1)
	if n := len(PDBs(one)); n != 1 {
		t.Errorf("a one-instance shard gets %d disruption budgets, want only the primary's", n)
	}
}

func TestPodSpecHashIgnoresRole(t *testing.T) {
	s := sampleShard()
	h := PodSpecHash(s, "pay-0-1")
	if h != PodSpecHash(s, "pay-0-1") || h == PodSpecHash(s, "pay-0-2") {
		t.Error("hash must be stable per instance and differ between instances")
	}
	s.Spec.Postgres.Image = "postgres:18"
	if PodSpecHash(s, "pay-0-1") == h {
		t.Error("an image change must change the hash")
	}
}

func TestClusterObjectsGolden(t *testing.T) {
	c := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Name: "pay", Namespace: "money", UID: "uid-cluster"},
		Spec: v1alpha1.LedgerClusterSpec{Shards: 2, Ledger: v1alpha1.LedgerSpec{Replicas: i32(3),
			// only the fields set become flags: the service keeps its own defaults
			Batching:   &v1alpha1.BatchingSpec{Writers: i32(4), Linger: &metav1.Duration{Duration: 2 * time.Millisecond}},
			TLSSecret:  &corev1.LocalObjectReference{Name: "pay-api-tls"},
			RateLimits: &v1alpha1.RateLimitsSpec{Writes: "600/m", Reads: "100/s:200"}},
			Redis: &v1alpha1.RedisSpec{Address: "cache.example:6380", TLS: true,
				PasswordSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "cache"}, Key: "password"}},
			Auth: &v1alpha1.AuthSpec{
				TokensSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "pay-tokens"}, Key: "tokens"},
				JWT: &v1alpha1.JWTSpec{Issuer: "https://id.example", Audience: "tally", JWKSURL: "https://id.example/jwks", RoleClaim: "scope",
					JWKSSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "id-keys"}, Key: "jwks.json"}}},
			Events: &v1alpha1.EventsSpec{Kafka: &v1alpha1.KafkaSpec{Brokers: []string{"kafka-0.example:9093", "kafka-1.example:9093"},
				TLS: &v1alpha1.KafkaTLS{CA: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "kafka-ca"}, Key: "ca.pem"},
					ClientSecret: &corev1.LocalObjectReference{Name: "relay-cert"}},
				SASL: &v1alpha1.KafkaSASL{Mechanism: "SCRAM-SHA-512", User: "relay",
					PasswordSecret: corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "relay-kafka"}, Key: "password"}}}},
		}}
	golden(t, "ledger-deployment", LedgerDeployment(c, LedgerShards{Count: 2, Verify: []bool{true, false}, CAHash: "c0ffee"}, "tally:1"))
	golden(t, "ledger-service", LedgerService(c))
	golden(t, "redis-deployment", RedisDeployment(c))
	golden(t, "relay-deployment", RelayDeployment(c, LedgerShards{Count: 2, Verify: []bool{true, false}, CAHash: "c0ffee"}, "tally:1"))
	shard, err := Shard(c, 1, "tally:1")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "ledgershard", shard.Object)
}

// The tokens Secret in its old place, spec.ledger.tokensSecret, still reaches the ledger.
func TestTokensSecretInItsOldPlace(t *testing.T) {
	c := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Name: "pay", Namespace: "money"}, Spec: v1alpha1.LedgerClusterSpec{Shards: 1,
		Ledger: v1alpha1.LedgerSpec{TokensSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "old"}, Key: "t"}}}}
	pod := LedgerDeployment(c, LedgerShards{Count: 1}, "tally:1").Spec.Template.Spec
	if !slices.Contains(pod.Containers[0].Args, "--tokens-file=/etc/tally/tokens/t") || *pod.Volumes[0].Secret.SecretName != "old" {
		t.Errorf("args %v, volumes %+v", pod.Containers[0].Args, pod.Volumes)
	}
}

// A managed Redis's password reaches the ledger from the Secret the operator made, by
// reference, never in an argument.
func TestManagedRedisPasswordReachesTheLedger(t *testing.T) {
	c := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Name: "pay", Namespace: "money"},
		Spec: v1alpha1.LedgerClusterSpec{Shards: 1, Redis: &v1alpha1.RedisSpec{Managed: true}}}
	container := LedgerDeployment(c, LedgerShards{Count: 1}, "tally:1").Spec.Template.Spec.Containers[0]
	found := false
	for _, e := range container.Env {
		if r := e.ValueFrom; *e.Name == RedisPasswordEnv && r != nil && r.SecretKeyRef != nil && *r.SecretKeyRef.Name == RedisName("pay") && *r.SecretKeyRef.Key == RedisPasswordKey {
			found = true
		}
	}
	if !found || !slices.Contains(container.Args, "--redis-url=redis://pay-redis.money.svc:6379/0") {
		t.Errorf("env %+v, args %v", container.Env, container.Args)
	}
}

// Volumes and credentials are owned by their shard only under deletionPolicy Delete.
func TestDataOwnersFollowTheDeletionPolicy(t *testing.T) {
	for policy, owned := range map[v1alpha1.DeletionPolicy]bool{"": false, v1alpha1.DeletionPolicyRetain: false, v1alpha1.DeletionPolicyDelete: true} {
		s := sampleShard()
		s.Spec.DeletionPolicy = policy
		pvc := PVC(s, "pay-0-1")
		secret := Secret(s, "pay-0-app", "tally", "pw")
		token := StatusTokenSecret(s, "tok")
		if got := len(pvc.OwnerReferences) == 1 && len(secret.OwnerReferences) == 1 && len(token.OwnerReferences) == 1; got != owned {
			t.Errorf("policy %q: pvc %v, secret %v, token %v owners; want owned=%v", policy, pvc.OwnerReferences, secret.OwnerReferences, token.OwnerReferences, owned)
		}
		if !owned && (len(pvc.OwnerReferences) != 0 || len(secret.OwnerReferences) != 0) {
			t.Errorf("policy %q: owners %v %v", policy, pvc.OwnerReferences, secret.OwnerReferences)
		}
	}
}

// Instances of a shard avoid each other's node by default (preferred, so one node still
// runs them all); required and another topology key are honoured.
func TestInstancesSpreadAcrossNodes(t *testing.T) {
	s := sampleShard()
	anti := Pod(s, "pay-0-1", v1alpha1.RoleReplica).Spec.Affinity.PodAntiAffinity
	if len(anti.PreferredDuringSchedulingIgnoredDuringExecution) != 1 || len(anti.RequiredDuringSchedulingIgnoredDuringExecution) != 0 ||
		*anti.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("default anti-affinity %+v", anti)
	}
	s.Spec.Postgres.Affinity = &v1alpha1.AffinitySpec{PodAntiAffinityType: "required", TopologyKey: "topology.kubernetes.io/zone"}
	anti = Pod(s, "pay-0-1", v1alpha1.RoleReplica).Spec.Affinity.PodAntiAffinity
	if len(anti.RequiredDuringSchedulingIgnoredDuringExecution) != 1 || *anti.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != "topology.kubernetes.io/zone" {
		t.Errorf("required zone anti-affinity %+v", anti)
	}
}

// spec.events.cdc reaches the shard, and the shard's pods get the CDC login's password
// (which turns logical decoding on), so turning it on rolls them.
func TestCDCReachesTheShardsPods(t *testing.T) {
	c := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Name: "pay", Namespace: "money"},
		Spec: v1alpha1.LedgerClusterSpec{Shards: 1, Events: &v1alpha1.EventsSpec{CDC: &v1alpha1.CDCSpec{Enabled: true}}}}
	u, err := Shard(c, 0, "tally:1")
	if err != nil {
		t.Fatal(err)
	}
	if u.Object["spec"].(map[string]any)["cdc"] != true {
		t.Fatalf("shard spec %v", u.Object["spec"])
	}
	s := sampleShard()
	before := PodSpecHash(s, "pay-0-1")
	s.Spec.CDC = true
	if PodSpecHash(s, "pay-0-1") == before {
		t.Error("turning change data capture on must roll the pods")
	}
	env := Pod(s, "pay-0-1", v1alpha1.RolePrimary).Spec.Containers[0].Env
	if !slices.ContainsFunc(env, func(e corev1ac.EnvVarApplyConfiguration) bool {
		return *e.Name == CDCPasswordEnv && *e.ValueFrom.SecretKeyRef.Name == SecretCDC(s.Name)
	}) {
		t.Errorf("env %+v", env)
	}
}

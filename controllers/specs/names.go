// Package specs builds the desired Kubernetes objects of a LedgerCluster and its shards.
// Every function here is pure: the custom resource in, an apply configuration out. The
// reconcilers in package controllers only apply what these return.
package specs

import (
	"fmt"
	"strconv"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// Label keys the operator sets and selects on.
const (
	LabelName      = "app.kubernetes.io/name"
	LabelInstance  = "app.kubernetes.io/instance"
	LabelComponent = "app.kubernetes.io/component"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	LabelCluster   = "ledger.tally.dev/cluster"
	LabelShard     = "ledger.tally.dev/shard"
	LabelPod       = "ledger.tally.dev/instance"
	LabelRole      = "ledger.tally.dev/role"
	LabelSchema    = "ledger.tally.dev/schema-version"

	// AnnotationSpecHash records the hash of the desired pod spec a pod was made from.
	AnnotationSpecHash = "ledger.tally.dev/spec-hash"
)

// Component values.
const (
	ComponentPostgres  = "postgres"
	ComponentLedger    = "ledger"
	ComponentMigration = "migration"
	ComponentRelay     = "relay"
	ComponentArchive   = "archive" // a shard's archiver: its CronJob, Jobs, pods and volume
)

// Well-known names inside every shard database.
const (
	Database   = "tally"
	AppUser    = "tally_service"
	Superuser  = "postgres"
	Replicator = "streaming_replica"
	// MonitorUser is the operator's own login: it may only count accounts.
	MonitorUser = "tally_operator"
	// CDCUser is the change data capture login: it may replicate and read the journal.
	CDCUser = "tally_cdc"
	// RelayUser is the event relay's login: it may only read and publish the outbox.
	RelayUser    = "tally_relayer"
	PostgresPort = 5432
	StatusPort   = 8000 // the instance manager's status API
	// StatusTokenKey is the key of the status API token in its Secret.
	StatusTokenKey = "token"
	APIPort        = 8080
	GRPCPort       = 8081 // the ledger's gRPC API
	OpsPort        = 9090
)

// ShardName names a cluster's shard with the given index.
func ShardName(cluster string, index int32) string { return fmt.Sprintf("%s-%d", cluster, index) }

// InstanceName names the n-th (from 1) instance of a shard; its Pod and PVC share it.
func InstanceName(shard string, n int32) string { return fmt.Sprintf("%s-%d", shard, n) }

// InSpec reports whether name is one of the first instances of shard.
func InSpec(shard, name string, instances int32) bool {
	for n := int32(1); n <= instances; n++ {
		if InstanceName(shard, n) == name {
			return true
		}
	}
	return false
}

// Service names of a shard: read-write (primary), read-only (replicas), any instance.
func ServiceRW(shard string) string { return shard + "-rw" }

// ServiceRO names the service of a shard's replicas.
func ServiceRO(shard string) string { return shard + "-ro" }

// ServiceR names the service of any instance of a shard.
func ServiceR(shard string) string { return shard + "-r" }

// ServiceInstances names the headless Service that gives each instance a stable DNS
// name, <instance>.<shard>-instances, ready or not: replicas clone and stream through it.
func ServiceInstances(shard string) string { return shard + "-instances" }

// SecretStatusToken names the Secret of the token that guards the instance managers'
// status API; the operator and the managers read it.
func SecretStatusToken(shard string) string { return shard + "-instance-token" }

// InstanceAccount names the ServiceAccount (and its Role and RoleBinding) of a shard's
// PostgreSQL pods: it may read its own LedgerShard and nothing else.
func InstanceAccount(shard string) string { return shard + "-instance" }

// Secret names of a shard.
func SecretSuperuser(shard string) string { return shard + "-superuser" }

// SecretApp names the secret of the ledger service's database login.
func SecretApp(shard string) string { return shard + "-app" }

// SecretMonitor names the secret of the operator's login, which may only count accounts.
func SecretMonitor(shard string) string { return shard + "-monitor" }

// SecretCDC names the secret of the change data capture login.
func SecretCDC(shard string) string { return shard + "-cdc" }

// SecretRelay names the secret of the event relay's login.
func SecretRelay(shard string) string { return shard + "-relay" }

// SecretReplication names the secret of the replication login.
func SecretReplication(shard string) string { return shard + "-replication" }

// ConfigName names the ConfigMap of a shard's PostgreSQL settings.
func ConfigName(shard string) string { return shard + "-config" }

// PDBPrimary names the disruption budget of a shard's primary.
func PDBPrimary(shard string) string { return shard + "-primary" }

// PDBReplicas names the disruption budget of a shard's replicas.
func PDBReplicas(shard string) string { return shard + "-replicas" }

// MigrationJobName names the Job that brings a shard to a schema version; a new version
// is a new Job, so a finished Job is never re-run.
func MigrationJobName(shard string, version int32) string {
	return shard + "-migrate-v" + strconv.Itoa(int(version))
}

// ArchiveName names a shard's archiver CronJob and its volume.
func ArchiveName(shard string) string { return shard + "-archive" }

// LedgerName names the ledger service's Deployment and Service.
func LedgerName(cluster string) string { return cluster + "-ledger" }

// ClusterLabels are on every object of a cluster.
func ClusterLabels(cluster, component string) map[string]string {
	return map[string]string{
		LabelName: "tally", LabelInstance: cluster, LabelComponent: component,
		LabelManagedBy: ManagedBy, LabelCluster: cluster,
	}
}

// ManagedBy is the managed-by label of everything the operator makes; its cache holds
// only objects that carry it.
const ManagedBy = "tally-operator"

// ShardLabels are on every object of a shard.
func ShardLabels(shard *v1alpha1.LedgerShard, component string) map[string]string {
	l := ClusterLabels(shard.Spec.Cluster, component)
	l[LabelShard] = shard.Name
	return l
}

// PrimarySelector selects every shard's primary pod of a cluster: one pod per shard.
func PrimarySelector(cluster string) map[string]string {
	return map[string]string{LabelCluster: cluster, LabelComponent: ComponentPostgres, LabelRole: string(v1alpha1.RolePrimary)}
}

// LedgerSelector selects the ledger service pods.
func LedgerSelector(cluster string) map[string]string {
	return map[string]string{LabelCluster: cluster, LabelComponent: ComponentLedger}
}

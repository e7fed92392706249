package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// PostgresSpec describes the PostgreSQL instances of every shard. Unset fields take the
// defaults documented on each; the operator resolves them and never writes them back.
// +kubebuilder:validation:XValidation:rule="!has(self.synchronous) || !has(self.synchronous.number) || self.synchronous.number < (has(self.instances) ? self.instances : 3)",message="synchronous.number must be less than instances (3 when unset)"
// +kubebuilder:validation:XValidation:rule="!has(self.synchronous) || !has(self.synchronous.dataDurability) || self.synchronous.dataDurability != 'required' || (has(self.instances) ? self.instances : 3) > 1",message="dataDurability required needs at least 2 instances"
type PostgresSpec struct {
	// Image is the PostgreSQL server image. Default: postgres:17.
	// +optional
	Image string `json:"image,omitempty"`

	// Instances per shard: one primary and instances-1 replicas. Default: 3.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=9
	// +optional
	Instances *int32 `json:"instances,omitempty"`

	// Synchronous replication settings.
	// +optional
	Synchronous *SynchronousSpec `json:"synchronous,omitempty"`

	// Storage for each instance's data directory.
	// +optional
	Storage *StorageSpec `json:"storage,omitempty"`

	// Resources of each PostgreSQL container.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// Affinity spreads a shard's instances, so that losing one node (or zone) loses one
	// instance of a shard, not its primary with its synchronous standbys.
	// +optional
	Affinity *AffinitySpec `json:"affinity,omitempty"`

	// Parameters are PostgreSQL settings, from an allow-list; the operator owns the rest
	// (replication, durability, listen addresses).
	// Values are at most 64 characters of letters, digits, spaces and . _ - : (enough for
	// every allow-listed setting: sizes, durations, numbers, words), so no value can break
	// the configuration file it is written to.
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(k, k in ['max_connections', 'shared_buffers', 'work_mem', 'maintenance_work_mem', 'effective_cache_size', 'wal_compression', 'checkpoint_timeout', 'checkpoint_completion_target', 'max_wal_size', 'min_wal_size', 'random_page_cost', 'effective_io_concurrency', 'log_min_duration_statement', 'statement_timeout', 'idle_in_transaction_session_timeout', 'lock_timeout', 'log_statement', 'log_lock_waits', 'track_io_timing', 'autovacuum_vacuum_scale_factor', 'autovacuum_analyze_scale_factor', 'autovacuum_max_workers', 'autovacuum_naptime'])",message="only allow-listed PostgreSQL parameters may be set; see the LedgerCluster documentation"
	// +optional
	Parameters map[string]ParameterValue `json:"parameters,omitempty"`
}

// SynchronousMethod chooses how synchronous_standby_names counts standbys.
// +kubebuilder:validation:Enum=any;first
type SynchronousMethod string

// Synchronous methods: ANY n (quorum) or FIRST n (priority).
const (
	SynchronousAny   SynchronousMethod = "any"
	SynchronousFirst SynchronousMethod = "first"
)

// DataDurability says what happens when too few synchronous standbys are available.
// +kubebuilder:validation:Enum=required;preferred
type DataDurability string

// With required, writes wait rather than be acknowledged without a synchronous copy;
// with preferred, the primary drops to asynchronous replication to stay writable.
const (
	DurabilityRequired  DataDurability = "required"
	DurabilityPreferred DataDurability = "preferred"
)

// SynchronousSpec sets synchronous replication. Defaults: method any, number 1,
// dataDurability required.
type SynchronousSpec struct {
	// +optional
	Method SynchronousMethod `json:"method,omitempty"`
	// Number of synchronous standbys that must confirm each commit.
	// +kubebuilder:validation:Minimum=1
	// +optional
	Number *int32 `json:"number,omitempty"`
	// +optional
	DataDurability DataDurability `json:"dataDurability,omitempty"`
}

// StorageSpec is the volume of each instance. Default size: 10Gi.
type StorageSpec struct {
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`
	// StorageClass of the volumes; cannot change once set.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="storageClass is immutable"
	// +optional
	StorageClass *string `json:"storageClass,omitempty"`
}

// ParameterValue is one PostgreSQL setting's value: letters, digits, spaces and . _ - :
// only, so it cannot break out of the configuration file it is written to.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=64
// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._: -]+$`
type ParameterValue string

// AffinitySpec says how a shard's instances are spread.
type AffinitySpec struct {
	// PodAntiAffinityType is preferred (the default: spread when the cluster can, so a
	// one-node cluster still runs every instance) or required (never two instances of a
	// shard in one topology domain; an instance without a free domain stays Pending).
	// +kubebuilder:validation:Enum=preferred;required
	// +optional
	PodAntiAffinityType string `json:"podAntiAffinityType,omitempty"`
	// TopologyKey is the node label whose values are the domains to spread over.
	// Default: kubernetes.io/hostname; topology.kubernetes.io/zone spreads over zones.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	TopologyKey string `json:"topologyKey,omitempty"`
}

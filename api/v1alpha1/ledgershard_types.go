package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LedgerShardSpec is written by the LedgerCluster controller; people read it.
type LedgerShardSpec struct {
	// Cluster is the owning LedgerCluster.
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="cluster is immutable"
	Cluster string `json:"cluster"`
	// Index is the shard number carried in every account id on this shard.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65535
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="index is immutable"
	Index int32 `json:"index"`
	// Image is the tally image: its migrations run against this shard.
	Image string `json:"image"`
	// Postgres describes this shard's instances.
	// +optional
	Postgres PostgresSpec `json:"postgres,omitempty"`
	// NetworkPolicies is the cluster's: whether the shard's pods accept only the
	// connections they need.
	// +optional
	NetworkPolicies bool `json:"networkPolicies,omitempty"`
	// CDC is the cluster's spec.events.cdc.enabled: logical decoding on, and the
	// publication and login for change data capture kept on the primary.
	// +optional
	CDC bool `json:"cdc,omitempty"`
	// TLS is the cluster's encryption in transit.
	// +optional
	TLS TLSSpec `json:"tls,omitempty"`
	// Retention is the cluster's: the shard's archiver CronJob and volume.
	// +optional
	Retention *RetentionSpec `json:"retention,omitempty"`
	// DeletionPolicy is the cluster's: whether the shard's volumes and credentials are
	// kept (Retain, the default) or go with the shard (Delete).
	// +optional
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
	// Primary names the instance that should be primary. When it differs from
	// status.currentPrimary and that instance is a healthy synchronous replica, the
	// operator switches over to it, losing no acknowledged commit. After a failover it
	// switches back once the named instance has caught up; leave it empty to let the
	// operator choose. Set it with kubectl patch; the LedgerCluster never writes it. An
	// instance beyond spec.postgres.instances is never switched to.
	// +kubebuilder:validation:MaxLength=253
	// +optional
	Primary string `json:"primary,omitempty"`
}

// InstanceRole is what an instance is in its shard.
// +kubebuilder:validation:Enum=primary;replica
type InstanceRole string

// Instance roles.
const (
	RolePrimary InstanceRole = "primary"
	RoleReplica InstanceRole = "replica"
)

// InstanceStatus is one PostgreSQL instance as last observed.
type InstanceStatus struct {
	Name string       `json:"name"`
	Role InstanceRole `json:"role"`
	// Ready is the pod's readiness.
	Ready bool `json:"ready"`
	// +optional
	Timeline int64 `json:"timeline,omitempty"`
	// +optional
	ReceivedLSN string `json:"receivedLSN,omitempty"`
	// +optional
	ReplayedLSN string `json:"replayedLSN,omitempty"`
	// WAL is how far the instance's WAL goes (flushed on a primary; received or replayed
	// on a replica).
	// +optional
	WAL string `json:"wal,omitempty"`
	// Streaming reports whether a replica's WAL receiver streams from the primary.
	// +optional
	Streaming bool `json:"streaming,omitempty"`
	// Fenced instances keep PostgreSQL stopped.
	// +optional
	Fenced bool `json:"fenced,omitempty"`
	// Reachable reports whether the instance manager answered the last status call.
	// +optional
	Reachable bool `json:"reachable,omitempty"`
}

// LedgerShardStatus is what the operator observed of one shard.
type LedgerShardStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// CurrentPrimary is the instance serving writes.
	// +optional
	CurrentPrimary string `json:"currentPrimary,omitempty"`
	// TargetPrimary is the instance that should serve writes, as the instance managers
	// read it; it is empty while a failover or switchover decides, so no instance may
	// start as primary meanwhile.
	// +optional
	TargetPrimary string `json:"targetPrimary,omitempty"`
	// Instances, by name.
	// +listType=map
	// +listMapKey=name
	// +optional
	Instances []InstanceStatus `json:"instances,omitempty"`
	// PrimaryUnhealthySince is when the operator first found the current primary
	// unhealthy, cleared once it is healthy or replaced. It lives in status so that a
	// restarted or newly elected operator keeps counting toward the failover delay
	// instead of starting again.
	// +optional
	PrimaryUnhealthySince *metav1.Time `json:"primaryUnhealthySince,omitempty"`
	// ServingTLS is true once the primary serves TLS with the cluster's certificates, so
	// clients may require it (verify-full): until then they only prefer it.
	// +optional
	ServingTLS bool `json:"servingTLS,omitempty"`
	// SchemaVersion is the ledger schema version applied to this shard.
	// +optional
	SchemaVersion int32 `json:"schemaVersion,omitempty"`
	// Accounts is how many customer accounts the shard holds, when known. A shard whose
	// count is unknown is treated as holding accounts.
	// +optional
	Accounts *int64 `json:"accounts,omitempty"`
	// Conditions: Ready, Progressing, Degraded, MigrationsApplied.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// LedgerShard is one shard of a LedgerCluster: a PostgreSQL primary with replicas.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ls,categories=tally
// +kubebuilder:printcolumn:name="Cluster",type=string,JSONPath=`.spec.cluster`
// +kubebuilder:printcolumn:name="Index",type=integer,JSONPath=`.spec.index`
// +kubebuilder:printcolumn:name="Primary",type=string,JSONPath=`.status.currentPrimary`
// +kubebuilder:printcolumn:name="Schema",type=integer,JSONPath=`.status.schemaVersion`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LedgerShard struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LedgerShardSpec   `json:"spec"`
	Status LedgerShardStatus `json:"status,omitempty"`
}

// LedgerShardList is a list of LedgerShards.
// +kubebuilder:object:root=true
type LedgerShardList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LedgerShard `json:"items"`
}

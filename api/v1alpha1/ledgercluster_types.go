package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LedgerClusterSpec is what a platform team declares.
// +kubebuilder:validation:XValidation:rule="!(has(self.auth) && has(self.auth.tokensSecret) && has(self.ledger) && has(self.ledger.tokensSecret))",message="name the tokens Secret in auth.tokensSecret only (ledger.tokensSecret is its old place)"
type LedgerClusterSpec struct {
	// Shards is the number of PostgreSQL shards; `kubectl scale` changes it. Shards that
	// hold accounts are never removed.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	Shards int32 `json:"shards"`

	// Postgres describes every shard's PostgreSQL instances.
	// +optional
	Postgres PostgresSpec `json:"postgres,omitempty"`

	// Ledger describes the ledger service in front of the shards.
	// +optional
	Ledger LedgerSpec `json:"ledger,omitempty"`

	// Auth says who may call the ledger API: services with static bearer tokens, people
	// and services with JWTs from an OIDC issuer, or both. Without it the API is open to
	// anyone who can reach it inside the cluster network.
	// +optional
	Auth *AuthSpec `json:"auth,omitempty"`

	// TLS says how connections to PostgreSQL and to the instance managers are encrypted.
	// +optional
	TLS TLSSpec `json:"tls,omitempty"`

	// Redis is a cache beside the ledger: its replicas share each caller's rate-limit
	// allowance there. Losing it costs fairness for a few seconds (each replica then
	// limits alone), never correctness: PostgreSQL holds every truth.
	// +optional
	Redis *RedisSpec `json:"redis,omitempty"`

	// Events publishes what the ledger did (committed transactions, account and transfer
	// changes) to Kafka through a relay the operator runs, and can open the journal to
	// change data capture. Each shard writes its events with the money either way (an
	// outbox); without a relay they wait there.
	// +optional
	Events *EventsSpec `json:"events,omitempty"`

	// NetworkPolicies, when true, has the operator keep a NetworkPolicy per shard:
	// PostgreSQL accepts connections only from the shard's instances, the cluster's ledger
	// pods, the shard's migration Jobs and the operator; the instance managers' status
	// API only from the shard's instances and the operator; and a managed Redis accepts
	// only the ledger pods. It needs a network plugin that enforces NetworkPolicies.
	// +optional
	NetworkPolicies bool `json:"networkPolicies,omitempty"`

	// Retention keeps the journal in the databases for a number of months: older
	// partitions are archived to files on a volume per shard (compressed, checked, and
	// only then dropped from the database) by a CronJob per shard. Balances stay whole
	// (checkpoints); reads of history before the horizon answer that it is archived.
	// +optional
	Retention *RetentionSpec `json:"retention,omitempty"`

	// DeletionPolicy says what deleting the cluster or one of its shards does to the
	// shards' volumes and credentials. Retain (the default) keeps them, owned by nothing,
	// so no delete in any propagation mode erases a journal, and a cluster re-created
	// under the same name finds them again; Delete lets them go with their shard. While
	// a cluster lists a shard that holds accounts, deleting that LedgerShard waits
	// (Degraded/DeletionBlocked) unless the policy is Delete.
	// +optional
	DeletionPolicy DeletionPolicy `json:"deletionPolicy,omitempty"`
}

// RetentionSpec is how long the journal stays in the database, and where older
// partitions go.
type RetentionSpec struct {
	// Months of journal partitions kept in the database after they end.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1200
	Months int32 `json:"months"`
	// Schedule is when the archiver runs, in cron syntax (default "23 3 * * *", daily).
	// +optional
	// +kubebuilder:validation:MinLength=9
	Schedule string `json:"schedule,omitempty"`
	// Storage is each shard's archive volume: kept, like the shard's data, when the
	// shard or cluster is deleted unless deletionPolicy is Delete.
	Storage ArchiveStorage `json:"storage"`
}

// ArchiveStorage is the volume archives are written to.
type ArchiveStorage struct {
	// Size of each shard's archive volume.
	Size resource.Quantity `json:"size"`
	// StorageClass of the volume; empty uses the cluster's default.
	// +optional
	StorageClass *string `json:"storageClass,omitempty"`
}

// TLSSpec is the cluster's encryption in transit.
// +kubebuilder:validation:XValidation:rule="self.mode != 'CertManager' || has(self.issuerRef)",message="mode CertManager needs an issuerRef"
// +kubebuilder:validation:XValidation:rule="self.mode == 'CertManager' || !has(self.issuerRef)",message="issuerRef applies to mode CertManager only"
type TLSSpec struct {
	// Mode: Operator (the default) has the operator issue every certificate from a CA of
	// the cluster's own (Secret <cluster>-ca, ten years) and renew the servers' (90 days,
	// renewed with 30 left) without downtime. CertManager has cert-manager issue them
	// (a Certificate per shard, from issuerRef, which must fill ca.crt: a CA or Vault
	// issuer). Either way PostgreSQL requires TLS from outside its pod; the ledger,
	// migrations, replication and the operator verify it (verify-full); the instance
	// managers' status API is HTTPS. Disabled leaves every connection in the clear, for
	// networks that encrypt by themselves (a service mesh).
	// +kubebuilder:default=Operator
	// +optional
	Mode TLSMode `json:"mode,omitempty"`

	// IssuerRef is the cert-manager issuer of mode CertManager.
	// +optional
	IssuerRef *IssuerRef `json:"issuerRef,omitempty"`
}

// RedisSpec is either a Redis the operator runs or one the cluster is given.
// +kubebuilder:validation:XValidation:rule="(has(self.managed) && self.managed) != has(self.address)",message="redis is either managed: true or an address"
// +kubebuilder:validation:XValidation:rule="has(self.address) || !has(self.image) || (has(self.managed) && self.managed)",message="image applies to a managed Redis"
// +kubebuilder:validation:XValidation:rule="has(self.address) || (!has(self.passwordSecret) && !(has(self.tls) && self.tls))",message="passwordSecret and tls apply to an external Redis"
type RedisSpec struct {
	// Managed has the operator run a single-replica Redis Deployment and Service owned
	// by the cluster (a cache only: nothing is persisted).
	// +optional
	Managed bool `json:"managed,omitempty"`
	// Image of the managed Redis. Default: redis:7.
	// +optional
	Image string `json:"image,omitempty"`
	// Address of an external Redis, host:port.
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9.-]+:[0-9]{1,5}$`
	// +optional
	Address string `json:"address,omitempty"`
	// PasswordSecret holds the external Redis's password.
	// +optional
	PasswordSecret *corev1.SecretKeySelector `json:"passwordSecret,omitempty"`
	// TLS reaches the external Redis over TLS, verified against the system's roots.
	// +optional
	TLS bool `json:"tls,omitempty"`
}

// EventsSpec says where the cluster's events go.
type EventsSpec struct {
	// Kafka has the operator run the event relay (Deployment <cluster>-relay, several
	// replicas: per shard one publishes, the others stand by) publishing every shard's
	// events to this Kafka.
	// +optional
	Kafka *KafkaSpec `json:"kafka,omitempty"`
	// CDC opens every shard's journal to change data capture (Debezium and the like).
	// +optional
	CDC *CDCSpec `json:"cdc,omitempty"`
}

// CDCSpec is change data capture of the shards' journals.
type CDCSpec struct {
	// Enabled runs each shard's PostgreSQL with wal_level=logical (changing it rolls the
	// shard's pods, primary last) and keeps on its primary a publication tally_cdc over
	// the journal tables (transactions, entries, accounts, pending_transfers,
	// inbound_transfers, reversals) and a login tally_cdc that may replicate and read
	// those tables only (password in Secret <shard>-cdc). Logical replication slots do
	// not follow a failover before PostgreSQL 17: a consumer must take a new snapshot
	// after one (see the README).
	Enabled bool `json:"enabled"`
}

// KafkaSpec is the Kafka the relay publishes to.
type KafkaSpec struct {
	// Brokers to bootstrap from, host:port.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z0-9.-]+:[0-9]{1,5}$`
	Brokers []string `json:"brokers"`
	// Topic the events go to. Default: tally.events.
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9._-]{1,249}$`
	// +optional
	Topic string `json:"topic,omitempty"`
	// Replicas of the relay. Default: 2.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=5
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`
	// TLS reaches Kafka over TLS.
	// +optional
	TLS *KafkaTLS `json:"tls,omitempty"`
	// SASL authenticates the relay to Kafka.
	// +optional
	SASL *KafkaSASL `json:"sasl,omitempty"`
}

// KafkaTLS is how the relay verifies Kafka, and proves who it is.
type KafkaTLS struct {
	// CA holds the PEM certificates Kafka's must chain to. Default: the system's roots.
	// +optional
	CA *corev1.SecretKeySelector `json:"ca,omitempty"`
	// ClientSecret is a kubernetes.io/tls Secret whose certificate the relay presents
	// (mutual TLS).
	// +optional
	ClientSecret *corev1.LocalObjectReference `json:"clientSecret,omitempty"`
}

// KafkaSASL is the relay's SASL login.
type KafkaSASL struct {
	// Mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	// +kubebuilder:validation:Enum=PLAIN;SCRAM-SHA-256;SCRAM-SHA-512
	Mechanism string `json:"mechanism"`
	// User to log in as.
	// +kubebuilder:validation:MinLength=1
	User string `json:"user"`
	// PasswordSecret holds its password.
	PasswordSecret corev1.SecretKeySelector `json:"passwordSecret"`
}

// RateLimitsSpec limits each caller's requests, per class of route, as
// RATE/UNIT[:BURST] with UNIT s, m or h (600/m; 100/s:200). A class left out is not limited.
type RateLimitsSpec struct {
	// Writes: every POST (transfers, transactions, accounts, ...).
	// +kubebuilder:validation:Pattern=`^[1-9][0-9]{0,8}/[smh](:[1-9][0-9]{0,8})?$`
	// +optional
	Writes string `json:"writes,omitempty"`
	// Reads: every GET.
	// +kubebuilder:validation:Pattern=`^[1-9][0-9]{0,8}/[smh](:[1-9][0-9]{0,8})?$`
	// +optional
	Reads string `json:"reads,omitempty"`
}

// IssuerRef names a cert-manager Issuer or ClusterIssuer.
type IssuerRef struct {
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
	// Kind: Issuer (the default, in the cluster's namespace) or ClusterIssuer.
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	// +optional
	Kind string `json:"kind,omitempty"`
	// Group of the issuer kind. Default: cert-manager.io.
	// +optional
	Group string `json:"group,omitempty"`
}

// TLSMode is who issues the cluster's certificates, if anyone.
// +kubebuilder:validation:Enum=Operator;CertManager;Disabled
type TLSMode string

// TLS modes.
const (
	TLSOperator    TLSMode = "Operator"
	TLSCertManager TLSMode = "CertManager"
	TLSDisabled    TLSMode = "Disabled"
)

// Enabled reports whether the mode encrypts: every mode but Disabled.
func (m TLSMode) Enabled() bool { return m != TLSDisabled }

// Enabled reports whether the cluster encrypts.
func (t TLSSpec) Enabled() bool { return t.Mode.Enabled() }

// DeletionPolicy is what happens to a shard's data when the shard is deleted.
// +kubebuilder:validation:Enum=Retain;Delete
type DeletionPolicy string

// Deletion policies.
const (
	DeletionPolicyRetain DeletionPolicy = "Retain"
	DeletionPolicyDelete DeletionPolicy = "Delete"
)

// Resolved is the policy in force: Retain unless Delete is set.
func (p DeletionPolicy) Resolved() DeletionPolicy {
	if p == DeletionPolicyDelete {
		return DeletionPolicyDelete
	}
	return DeletionPolicyRetain
}

// AuthSpec is how the ledger API knows its callers. What each caller may do follows
// from its roles: a user uses only accounts it owns (owner = its name or JWT subject),
// an operator any account and the external accounts, an admin also assets and closing.
// +kubebuilder:validation:XValidation:rule="has(self.tokensSecret) || has(self.jwt)",message="auth needs tokensSecret, jwt, or both"
type AuthSpec struct {
	// TokensSecret holds static bearer tokens for services, as lines of
	// caller:token [roles=user,operator,admin] under the given key (without roles= a
	// caller is an operator and an admin).
	// +optional
	TokensSecret *corev1.SecretKeySelector `json:"tokensSecret,omitempty"`

	// JWT lets in callers with JWTs signed by an OIDC issuer.
	// +optional
	JWT *JWTSpec `json:"jwt,omitempty"`
}

// JWTSpec says which JWTs the ledger accepts: RS256, ES256 or EdDSA signatures by the
// issuer's keys, with iss, aud and exp checked; the subject is the caller.
// +kubebuilder:validation:XValidation:rule="has(self.jwksURL) || has(self.jwksSecret)",message="jwt needs the issuer's keys: jwksURL, jwksSecret, or both"
type JWTSpec struct {
	// Issuer is the iss tokens must carry.
	// +kubebuilder:validation:MinLength=1
	Issuer string `json:"issuer"`

	// Audience is the aud tokens must name: the ledger's, so a token minted for another
	// service of the same issuer is refused.
	// +kubebuilder:validation:MinLength=1
	Audience string `json:"audience"`

	// JWKSURL is the issuer's JWK Set, fetched over HTTPS, refreshed hourly and when a
	// token names a key it does not hold, so the issuer rotates keys without a restart.
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://')",message="jwksURL must be an https:// URL: keys fetched in the clear could be forged"
	// +optional
	JWKSURL string `json:"jwksURL,omitempty"`

	// JWKSSecret holds a JWK Set of the issuer's public keys under the given key.
	// +optional
	JWKSSecret *corev1.SecretKeySelector `json:"jwksSecret,omitempty"`

	// RoleClaim is the claim naming a caller's roles beyond user (operator, admin), as a
	// space-separated string (like scope) or a list. Default: roles.
	// +kubebuilder:validation:Pattern=`^[A-Za-z_][A-Za-z0-9_.:/-]*$`
	// +optional
	RoleClaim string `json:"roleClaim,omitempty"`
}

// LedgerSpec is the ledger service Deployment.
type LedgerSpec struct {
	// Replicas of the ledger service. Default: 2.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Replicas *int32 `json:"replicas,omitempty"`

	// Image of the ledger service and of the migration Jobs. Default: the operator's own
	// image, so the ledger and its schema match the operator's version.
	// +optional
	Image string `json:"image,omitempty"`

	// Resources of each ledger container.
	// +optional
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`

	// TLSSecret names a kubernetes.io/tls Secret (yours, or cert-manager's) with which
	// the API serves HTTPS; a renewed Secret is served without a restart. Without it
	// the API is plain HTTP, for a mesh or an ingress that terminates TLS.
	// +optional
	TLSSecret *corev1.LocalObjectReference `json:"tlsSecret,omitempty"`

	// RateLimits limits each caller's requests; shared by the replicas through
	// spec.redis when there is one, else each replica limits alone.
	// +optional
	RateLimits *RateLimitsSpec `json:"rateLimits,omitempty"`

	// TokensSecret is the old place of auth.tokensSecret, still honoured.
	// +optional
	TokensSecret *corev1.SecretKeySelector `json:"tokensSecret,omitempty"`

	// IdempotencyRetention is how long idempotency records are kept. Default: 24h.
	// +optional
	IdempotencyRetention *metav1.Duration `json:"idempotencyRetention,omitempty"`

	// Batching tunes how each ledger replica coalesces one shard's requests into database
	// transactions. The defaults suit most ledgers.
	// +optional
	Batching *BatchingSpec `json:"batching,omitempty"`
}

// BatchingSpec bounds the batching of one shard's requests in each ledger replica. Every
// writer and reader holds a database connection while it works, so each replica may open
// up to 16 connections to every shard, or writers + readers + 8 if that is more.
type BatchingSpec struct {
	// Writers is how many batches of transactions may be in flight at once: one collects
	// while another commits. Default: 2.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16
	// +optional
	Writers *int32 `json:"writers,omitempty"`

	// MaxBatch is the most transaction requests in one database transaction: bigger
	// batches amortise the commit further but hold their locks longer. Default: 100.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +optional
	MaxBatch *int32 `json:"maxBatch,omitempty"`

	// Linger is how long a writer with a small batch waits for more requests before it
	// commits; at low load it is the latency batching adds. More than 0, at most 50ms.
	// Default: 500us.
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('50ms')",message="linger must be more than 0s and at most 50ms"
	// +optional
	Linger *metav1.Duration `json:"linger,omitempty"`

	// Readers is how many balance queries may be in flight at once, each answering every
	// balance read queued behind the one before. Default: 1.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16
	// +optional
	Readers *int32 `json:"readers,omitempty"`
}

// LedgerClusterStatus is what the operator observed.
type LedgerClusterStatus struct {
	// ObservedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Shards is how many LedgerShards exist (the scale subresource's status.replicas).
	// +optional
	Shards int32 `json:"shards,omitempty"`
	// ReadyShards counts shards whose primary is ready and whose schema is current.
	// +optional
	ReadyShards int32 `json:"readyShards,omitempty"`
	// Selector selects one pod per shard, each shard's primary, for the scale
	// subresource: spec.shards counts shards, so an autoscaler reading it must see shards'
	// pods (their database load), not the ledger service's.
	// +optional
	Selector string `json:"selector,omitempty"`
	// LostShards are shard indexes deleted with their volumes (deletionPolicy Delete)
	// while they held accounts. The operator does not create them again, since an empty
	// shard would answer for accounts that existed; scaling the cluster below an index
	// acknowledges its loss and forgets it.
	// +listType=set
	// +optional
	LostShards []int32 `json:"lostShards,omitempty"`
	// Conditions: Ready, Progressing, Degraded, MigrationsApplied.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// LedgerCluster is a double-entry ledger on sharded, replicated PostgreSQL.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.shards,statuspath=.status.shards,selectorpath=.status.selector
// +kubebuilder:resource:shortName=lc,categories=tally
// +kubebuilder:printcolumn:name="Shards",type=integer,JSONPath=`.spec.shards`
// +kubebuilder:printcolumn:name="Ready Shards",type=integer,JSONPath=`.status.readyShards`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LedgerCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   LedgerClusterSpec   `json:"spec"`
	Status LedgerClusterStatus `json:"status,omitempty"`
}

// LedgerClusterList is a list of LedgerClusters.
// +kubebuilder:object:root=true
type LedgerClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LedgerCluster `json:"items"`
}

package specs

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// Defaults, resolved here and never written into a user's spec.
const (
	DefaultPostgresImage        = "postgres:17"
	DefaultInstances      int32 = 3
	DefaultSyncNumber     int32 = 1
	DefaultLedgerReplicas int32 = 2
	DefaultStorageSize          = "10Gi"
)

// Postgres is a PostgresSpec with every default resolved.
type Postgres struct {
	Image        string
	Instances    int32
	SyncMethod   v1alpha1.SynchronousMethod
	SyncNumber   int32
	Durability   v1alpha1.DataDurability
	StorageSize  resource.Quantity
	StorageClass *string
	Resources    corev1.ResourceRequirements
	Parameters   map[string]string
	// AntiAffinityRequired and TopologyKey spread the instances (AffinitySpec).
	AntiAffinityRequired bool
	TopologyKey          string
}

// ResolvePostgres fills in the defaults of a PostgresSpec.
func ResolvePostgres(p v1alpha1.PostgresSpec) Postgres {
	r := Postgres{
		Image: p.Image, Instances: DefaultInstances, SyncMethod: v1alpha1.SynchronousAny,
		SyncNumber: DefaultSyncNumber, Durability: v1alpha1.DurabilityRequired,
		StorageSize: resource.MustParse(DefaultStorageSize),
	}
	r.TopologyKey = corev1.LabelHostname
	if a := p.Affinity; a != nil {
		r.AntiAffinityRequired = a.PodAntiAffinityType == "required"
		if a.TopologyKey != "" {
			r.TopologyKey = a.TopologyKey
		}
	}
	if len(p.Parameters) > 0 {
		r.Parameters = make(map[string]string, len(p.Parameters))
		for k, v := range p.Parameters {
			r.Parameters[k] = string(v)
		}
	}
	if r.Image == "" {
		r.Image = DefaultPostgresImage
	}
	if p.Instances != nil {
		r.Instances = *p.Instances
	}
	if s := p.Synchronous; s != nil {
		if s.Method != "" {
			r.SyncMethod = s.Method
		}
		if s.Number != nil {
			r.SyncNumber = *s.Number
		}
		if s.DataDurability != "" {
			r.Durability = s.DataDurability
		}
	}
	if r.SyncNumber >= r.Instances { // a single instance has no standby to wait for
		r.SyncNumber = r.Instances - 1
	}
	if s := p.Storage; s != nil {
		if s.Size != nil {
			r.StorageSize = *s.Size
		}
		r.StorageClass = s.StorageClass
	}
	if p.Resources != nil {
		r.Resources = *p.Resources
	}
	return r
}

// Ledger is a LedgerSpec with every default resolved.
type Ledger struct {
	Replicas             int32
	Image                string
	Resources            corev1.ResourceRequirements
	IdempotencyRetention metav1.Duration
	Batching             v1alpha1.BatchingSpec // unset fields take the service's own defaults
}

// ResolveLedger fills in the defaults of a LedgerSpec; operatorImage is the operator's
// own image, the default for the ledger.
func ResolveLedger(l v1alpha1.LedgerSpec, operatorImage string) Ledger {
	r := Ledger{Replicas: DefaultLedgerReplicas, Image: l.Image}
	if l.Replicas != nil {
		r.Replicas = *l.Replicas
	}
	if r.Image == "" {
		r.Image = operatorImage
	}
	if l.Resources != nil {
		r.Resources = *l.Resources
	}
	r.IdempotencyRetention = metav1.Duration{Duration: 24 * 60 * 60 * 1e9}
	if l.IdempotencyRetention != nil {
		r.IdempotencyRetention = *l.IdempotencyRetention
	}
	if l.Batching != nil {
		r.Batching = *l.Batching
	}
	return r
}

// Package v1alpha1 holds the ledger.tally.dev/v1alpha1 API: LedgerCluster, which a
// platform team applies, and LedgerShard, which the operator makes one per shard.
// +kubebuilder:object:generate=true
// +groupName=ledger.tally.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of these kinds.
	GroupVersion = schema.GroupVersion{Group: "ledger.tally.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

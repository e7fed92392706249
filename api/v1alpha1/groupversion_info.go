// Package v1alpha1 holds the ledger.tally.dev/v1alpha1 API: LedgerCluster, which a
// platform team applies, and LedgerShard, which the operator makes one per shard.
// +kubebuilder:object:generate=true
// +groupName=ledger.tally.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of these kinds.
	GroupVersion = schema.GroupVersion{Group: "ledger.tally.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &LedgerCluster{}, &LedgerClusterList{}, &LedgerShard{}, &LedgerShardList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}

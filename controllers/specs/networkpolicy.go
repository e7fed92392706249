package specs

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// NetworkPolicyName names a shard's NetworkPolicy.
func NetworkPolicyName(shard string) string { return shard + "-postgres" }

// OperatorLabels are the operator pods' labels (config/manager, the Helm chart).
func OperatorLabels() map[string]string {
	return map[string]string{LabelName: "tally", LabelComponent: "operator"}
}

// ShardNetworkPolicy lets into the shard's PostgreSQL pods only what needs them:
// PostgreSQL from the shard's instances (replication, rewinds), the cluster's ledger
// and event relay pods, the shard's migration and archiver Jobs and the operator; the
// status API from the shard's instances and the operator. operatorNamespace is where the operator runs (empty: any
// namespace, for an operator that does not know its own). The kubelet's probes come
// from the node, which NetworkPolicies never block.
func ShardNetworkPolicy(shard *v1alpha1.LedgerShard, operatorNamespace string) *networkingv1ac.NetworkPolicyApplyConfiguration {
	pods := func(labels map[string]string) *networkingv1ac.NetworkPolicyPeerApplyConfiguration {
		return networkingv1ac.NetworkPolicyPeer().WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(labels))
	}
	instances := pods(map[string]string{LabelShard: shard.Name, LabelComponent: ComponentPostgres})
	ledger := pods(LedgerSelector(shard.Spec.Cluster))
	relay := pods(RelaySelector(shard.Spec.Cluster))
	migrations := pods(map[string]string{LabelShard: shard.Name, LabelComponent: ComponentMigration})
	archiver := pods(map[string]string{LabelShard: shard.Name, LabelComponent: ComponentArchive})
	namespaces := metav1ac.LabelSelector()
	if operatorNamespace != "" {
		namespaces = namespaces.WithMatchLabels(map[string]string{corev1.LabelMetadataName: operatorNamespace})
	}
	operator := networkingv1ac.NetworkPolicyPeer().WithNamespaceSelector(namespaces).
		WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(OperatorLabels()))
	port := func(p int) *networkingv1ac.NetworkPolicyPortApplyConfiguration {
		return networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt(p))
	}
	return networkingv1ac.NetworkPolicy(NetworkPolicyName(shard.Name), shard.Namespace).
		WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
		WithSpec(networkingv1ac.NetworkPolicySpec().
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{LabelShard: shard.Name, LabelComponent: ComponentPostgres})).
			WithPolicyTypes(networkingv1.PolicyTypeIngress).
			WithIngress(
				networkingv1ac.NetworkPolicyIngressRule().WithPorts(port(PostgresPort)).WithFrom(instances, ledger, relay, migrations, archiver, operator),
				networkingv1ac.NetworkPolicyIngressRule().WithPorts(port(StatusPort)).WithFrom(instances, operator),
			))
}

// RedisNetworkPolicy lets into the managed Redis only the cluster's ledger pods.
func RedisNetworkPolicy(c *v1alpha1.LedgerCluster) *networkingv1ac.NetworkPolicyApplyConfiguration {
	ledger := networkingv1ac.NetworkPolicyPeer().WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(LedgerSelector(c.Name)))
	return networkingv1ac.NetworkPolicy(RedisName(c.Name), c.Namespace).
		WithLabels(ClusterLabels(c.Name, ComponentRedis)).WithOwnerReferences(clusterOwner(c)).
		WithSpec(networkingv1ac.NetworkPolicySpec().
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(redisSelector(c.Name))).
			WithPolicyTypes(networkingv1.PolicyTypeIngress).
			WithIngress(networkingv1ac.NetworkPolicyIngressRule().
				WithPorts(networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt(RedisPort))).
				WithFrom(ledger)))
}

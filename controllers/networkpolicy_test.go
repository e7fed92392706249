package controllers_test

import (
	"errors"
	"fmt"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// TestNetworkPolicyFollowsTheSpec: with spec.networkPolicies each shard gets a policy
// that lets PostgreSQL be reached by the shard's instances, the ledger, the migrations
// and the operator only, and the status API by the instances and the operator; turned
// off, the policy goes. (Whether it is enforced is the network plugin's part.)
func TestNetworkPolicyFollowsTheSpec(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "fenced", 1, func(c *v1alpha1.LedgerCluster) { c.Spec.NetworkPolicies = true })
	shard := specs.ShardName("fenced", 0)
	var np networkingv1.NetworkPolicy
	waitFor(t, ns, specs.NetworkPolicyName(shard), &np)
	if np.Spec.PodSelector.MatchLabels[specs.LabelShard] != shard || len(np.Spec.Ingress) != 2 {
		t.Fatalf("policy %+v", np.Spec)
	}
	components := func(rule networkingv1.NetworkPolicyIngressRule) (port int32, from []string) {
		for _, peer := range rule.From {
			from = append(from, peer.PodSelector.MatchLabels[specs.LabelComponent])
		}
		return rule.Ports[0].Port.IntVal, from
	}
	for i, want := range []string{
		fmt.Sprint(specs.PostgresPort, []string{"postgres", "ledger", "relay", "migration", "archive", "operator"}),
		fmt.Sprint(specs.StatusPort, []string{"postgres", "operator"}),
	} {
		if port, from := components(np.Spec.Ingress[i]); fmt.Sprint(port, from) != want {
			t.Errorf("rule %d lets in %d from %v, want %s", i, port, from, want)
		}
	}
	update(t, ns, "fenced", &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) { c.Spec.NetworkPolicies = false })
	eventually(t, "the policy removed", func() error {
		if err := get(ns, specs.NetworkPolicyName(shard), &np); !apierrors.IsNotFound(err) {
			return errors.Join(errors.New("still there"), err)
		}
		return nil
	})
}

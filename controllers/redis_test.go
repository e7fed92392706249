package controllers_test

import (
	"errors"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// TestManagedRedisFollowsTheSpec: spec.redis.managed runs a Redis Deployment and
// Service owned by the cluster, behind a password the operator makes (the ledger's
// environment is specs' test) and, with spec.networkPolicies, a policy that lets in the
// ledger only; turned off, they go.
func TestManagedRedisFollowsTheSpec(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "cached", 1, func(c *v1alpha1.LedgerCluster) {
		c.Spec.Redis = &v1alpha1.RedisSpec{Managed: true}
		c.Spec.NetworkPolicies = true
		c.Spec.Ledger.RateLimits = &v1alpha1.RateLimitsSpec{Writes: "600/m"}
	})
	var dep appsv1.Deployment
	waitFor(t, ns, specs.RedisName("cached"), &dep)
	var svc corev1.Service
	waitFor(t, ns, specs.RedisName("cached"), &svc)
	if err := controlledBy(&dep, "LedgerCluster", "cached"); err != nil {
		t.Error(err)
	}
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != specs.DefaultRedisImage || !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "allkeys-lru") {
		t.Errorf("redis %s %v", img, dep.Spec.Template.Spec.Containers[0].Args)
	}
	var secret corev1.Secret
	waitFor(t, ns, specs.RedisName("cached"), &secret)
	if len(secret.Data[specs.RedisPasswordKey]) < 20 || controlledBy(&secret, "LedgerCluster", "cached") != nil {
		t.Errorf("the password's Secret: %d bytes, owners %v", len(secret.Data[specs.RedisPasswordKey]), secret.OwnerReferences)
	}
	if !slices.Contains(dep.Spec.Template.Spec.Containers[0].Args, "--requirepass") {
		t.Errorf("redis runs without a password: %v", dep.Spec.Template.Spec.Containers[0].Args)
	}
	var np networkingv1.NetworkPolicy
	waitFor(t, ns, specs.RedisName("cached"), &np)
	if in := np.Spec.Ingress; len(in) != 1 || len(in[0].From) != 1 || in[0].From[0].PodSelector.MatchLabels[specs.LabelComponent] != specs.ComponentLedger ||
		in[0].Ports[0].Port.IntVal != specs.RedisPort || np.Spec.PodSelector.MatchLabels[specs.LabelComponent] != specs.ComponentRedis {
		t.Errorf("the managed Redis's policy: %+v", np.Spec)
	}
	update(t, ns, "cached", &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) { c.Spec.Redis = nil })
	eventually(t, "the managed Redis removed", func() error {
		errDep, errSvc, errSecret := get(ns, specs.RedisName("cached"), &dep), get(ns, specs.RedisName("cached"), &svc), get(ns, specs.RedisName("cached"), &secret)
		errPolicy := get(ns, specs.RedisName("cached"), &np)
		if !apierrors.IsNotFound(errDep) || !apierrors.IsNotFound(errSvc) || !apierrors.IsNotFound(errSecret) || !apierrors.IsNotFound(errPolicy) {
			return errors.New("still there")
		}
		return nil
	})
}

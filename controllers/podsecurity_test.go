package controllers_test

import (
	"context"
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// TestPodsMeetTheRestrictedStandard asks the API server's Pod Security admission to
// admit every pod the operator makes (a PostgreSQL instance, the ledger, a migration)
// into a namespace that enforces the "restricted" standard.
func TestPodsMeetTheRestrictedStandard(t *testing.T) {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "restricted-", Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}}
	if err := k8s.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	cluster := &v1alpha1.LedgerCluster{ObjectMeta: metav1.ObjectMeta{Name: "pay", Namespace: ns.Name, UID: "uid"},
		Spec: v1alpha1.LedgerClusterSpec{Shards: 1, Auth: &v1alpha1.AuthSpec{JWT: &v1alpha1.JWTSpec{Issuer: "https://id.example", Audience: "tally",
			JWKSSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "keys"}, Key: "jwks"}}}}}
	shard := &v1alpha1.LedgerShard{ObjectMeta: metav1.ObjectMeta{Name: "pay-0", Namespace: ns.Name, UID: "uid"},
		Spec: v1alpha1.LedgerShardSpec{Cluster: "pay", Index: 0, Image: "tally:1"}}
	pods := map[string]*corev1ac.PodSpecApplyConfiguration{
		"postgres":  specs.Pod(shard, "pay-0-1", v1alpha1.RolePrimary).Spec,
		"ledger":    specs.LedgerDeployment(cluster, specs.LedgerShards{Count: 1, Verify: []bool{true}}, "tally:1").Spec.Template.Spec,
		"migration": specs.MigrationJob(shard, 2, true).Spec.Template.Spec,
		"redis":     specs.RedisDeployment(cluster).Spec.Template.Spec,
	}
	// A denial must be what fails here: first, a pod the standard refuses is refused.
	root := corev1ac.PodSpec().WithContainers(corev1ac.Container().WithName("c").WithImage("x").
		WithSecurityContext(corev1ac.SecurityContext().WithPrivileged(true)))
	if err := createPod(ctx, ns.Name, "privileged", root); err == nil {
		t.Fatal("a privileged pod was admitted: the namespace does not enforce the standard")
	}
	for name, spec := range pods {
		if err := createPod(ctx, ns.Name, name, spec); err != nil {
			t.Errorf("%s pod refused: %v", name, err)
		}
	}
}

// createPod creates a pod of the spec, as a server-side dry run (no kubelet runs here).
func createPod(ctx context.Context, ns, name string, spec *corev1ac.PodSpecApplyConfiguration) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	if err := json.Unmarshal(b, &pod.Spec); err != nil {
		return err
	}
	return k8s.Create(ctx, pod, client.DryRunAll)
}

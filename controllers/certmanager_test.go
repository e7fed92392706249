package controllers_test

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// TestCertManagerIssuesTheCertificates: with tls.mode CertManager the operator makes no
// CA of its own; it asks cert-manager, with the cluster's issuer, for each shard's
// certificate in the Secret the instances mount (labelled, so the operator sees it).
func TestCertManagerIssuesTheCertificates(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "managed", 1, func(c *v1alpha1.LedgerCluster) {
		c.Spec.TLS = v1alpha1.TLSSpec{Mode: v1alpha1.TLSCertManager, IssuerRef: &v1alpha1.IssuerRef{Name: "ledger-ca", Kind: "ClusterIssuer"}}
	})
	shard := specs.ShardName("managed", 0)
	cert := &unstructured.Unstructured{}
	cert.SetAPIVersion("cert-manager.io/v1")
	cert.SetKind("Certificate")
	waitFor(t, ns, specs.SecretTLS(shard), cert)
	spec, _ := cert.Object["spec"].(map[string]any)
	issuer, _ := spec["issuerRef"].(map[string]any)
	dns, _ := spec["dnsNames"].([]any)
	template, _ := spec["secretTemplate"].(map[string]any)
	labels, _ := template["labels"].(map[string]any)
	if spec["secretName"] != specs.SecretTLS(shard) || issuer["name"] != "ledger-ca" || issuer["kind"] != "ClusterIssuer" ||
		!slices.Contains(dns, any(specs.ServiceRW(shard)+"."+ns+".svc")) || labels[specs.LabelManagedBy] != specs.ManagedBy {
		t.Errorf("certificate spec %+v", spec)
	}
	if err := controlledBy(cert, "LedgerShard", shard); err != nil {
		t.Error(err)
	}
	var pod corev1.Pod
	waitFor(t, ns, specs.InstanceName(shard, 1), &pod)
	if !slices.ContainsFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == specs.SecretTLS(shard) }) {
		t.Errorf("the instance does not mount the certificate: %+v", pod.Spec.Volumes)
	}
	if err := get(ns, specs.SecretCA("managed"), &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("a CA of the operator's own beside cert-manager: %v", err)
	}
}

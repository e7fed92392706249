package controllers_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/internal/pki"
	"github.com/tallyhq/tally/ledger/migrations"
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

	// cert-manager issues; the shard comes up and the ledger trusts that CA.
	issue := func(ca *pki.CA) *corev1.Secret {
		cert, key, err := ca.Issue([]string{specs.ServiceRW(shard) + "." + ns + ".svc"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		s := specs.TLSSecret(&v1alpha1.LedgerShard{ObjectMeta: metav1.ObjectMeta{Name: shard, Namespace: ns}, Spec: v1alpha1.LedgerShardSpec{Cluster: "managed"}},
			cert, key, ca.CertPEM)
		s.OwnerReferences = nil
		return s
	}
	first, _ := pki.NewCA("issuer one", time.Hour, time.Now())
	if err := k8s.Create(ctx, issue(first)); err != nil {
		t.Fatal(err)
	}
	markPodReady(t, ns, specs.InstanceName(shard, 1))
	finishJob(t, ns, specs.MigrationJobName(shard, migrations.Count()), true)
	var dep appsv1.Deployment
	waitFor(t, ns, specs.LedgerName("managed"), &dep)
	hash := func() string {
		if err := get(ns, specs.LedgerName("managed"), &dep); err != nil {
			return ""
		}
		return dep.Spec.Template.Annotations[specs.AnnotationCAHash]
	}
	eventually(t, "the ledger to trust the issuer's CA", func() error {
		if hash() == "" {
			return errors.New("no CA hash on the ledger's pods")
		}
		return nil
	})
	before := hash()
	// A new CA (the issuer replaced) rolls the ledger, which reads its CAs at start.
	second, _ := pki.NewCA("issuer two", time.Hour, time.Now())
	renewed := issue(second)
	var have corev1.Secret
	if err := get(ns, renewed.Name, &have); err != nil {
		t.Fatal(err)
	}
	have.Data = renewed.Data
	if err := k8s.Update(ctx, &have); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new CA to roll the ledger", func() error {
		if h := hash(); h == before || h == "" {
			return fmt.Errorf("hash %q", h)
		}
		return nil
	})
}

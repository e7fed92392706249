package specs

import (
	"cmp"
	"fmt"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// The cluster's certificates (spec.tls): one CA per cluster, one server certificate per
// shard, which every instance of the shard serves.
const (
	CAValidity     = 10 * 365 * 24 * time.Hour
	ServerValidity = 90 * 24 * time.Hour
	// CAKey holds the CA's private key, beside corev1.ServiceAccountRootCAKey ("ca.crt").
	CAKey = "ca.key"
	// TLSMount is where an instance finds its certificate; CAMount where the ledger and
	// the migrations find the CA.
	TLSMount = "/etc/tally/tls"
	CAMount  = "/etc/tally/ca"
	// ComponentCA labels the CA Secret.
	ComponentCA = "ca"
)

// SecretCA names the cluster's CA Secret.
func SecretCA(cluster string) string { return cluster + "-ca" }

// SecretTLS names a shard's server certificate Secret.
func SecretTLS(shard string) string { return shard + "-tls" }

// CertNames are the names a shard's certificate answers to: its Services, each
// instance through the headless Service, and loopback inside the pod.
func CertNames(shard *v1alpha1.LedgerShard) []string {
	var names []string
	for _, svc := range []string{ServiceRW(shard.Name), ServiceRO(shard.Name), ServiceR(shard.Name)} {
		names = append(names, svc, svc+"."+shard.Namespace, svc+"."+shard.Namespace+".svc")
	}
	return append(names, fmt.Sprintf("*.%s.%s.svc", ServiceInstances(shard.Name), shard.Namespace), "localhost", "127.0.0.1")
}

// InstanceHost is how peers and the operator name an instance, as its certificate does.
func InstanceHost(shard *v1alpha1.LedgerShard, instance string) string {
	return fmt.Sprintf("%s.%s.%s.svc", instance, ServiceInstances(shard.Name), shard.Namespace)
}

// CASecret holds the cluster's CA, owned by the cluster (when it has a UID: it exists).
func CASecret(c *v1alpha1.LedgerCluster, certPEM, keyPEM []byte) *corev1.Secret {
	s := &corev1.Secret{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{corev1.ServiceAccountRootCAKey: certPEM, CAKey: keyPEM}}
	s.Name, s.Namespace, s.Labels = SecretCA(c.Name), c.Namespace, ClusterLabels(c.Name, ComponentCA)
	if c.UID != "" {
		t := true
		s.OwnerReferences = []metav1.OwnerReference{ownerRef(c.Name, c.UID, "LedgerCluster", &t)}
	}
	return s
}

// TLSSecret holds a shard's server certificate and the CA that signed it, owned by the
// shard (a new one is issued whenever it is missing).
func TLSSecret(shard *v1alpha1.LedgerShard, certPEM, keyPEM, caPEM []byte) *corev1.Secret {
	s := &corev1.Secret{Type: corev1.SecretTypeTLS, Data: map[string][]byte{
		corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM, corev1.ServiceAccountRootCAKey: caPEM}}
	s.Name, s.Namespace, s.Labels = SecretTLS(shard.Name), shard.Namespace, ShardLabels(shard, ComponentPostgres)
	t := true
	s.OwnerReferences = []metav1.OwnerReference{ownerRef(shard.Name, shard.UID, "LedgerShard", &t)}
	return s
}

// caVolume mounts the CA certificate of each named shard (the ca.crt of its server
// certificate's Secret, whoever issued it) as CAMount/<shard>.crt: never a CA's key.
func caVolume(shards ...string) (*corev1ac.VolumeApplyConfiguration, *corev1ac.VolumeMountApplyConfiguration) {
	projected := corev1ac.ProjectedVolumeSource()
	for _, shard := range shards {
		projected = projected.WithSources(corev1ac.VolumeProjection().WithSecret(corev1ac.SecretProjection().WithName(SecretTLS(shard)).
			WithItems(corev1ac.KeyToPath().WithKey(corev1.ServiceAccountRootCAKey).WithPath(shard + ".crt"))))
	}
	return corev1ac.Volume().WithName("ca").WithProjected(projected),
		corev1ac.VolumeMount().WithName("ca").WithMountPath(CAMount).WithReadOnly(true)
}

// sslParams are a client's connection parameters to a shard: verify-full against the
// shard's mounted CA once the shard serves TLS, else prefer (what a shard that does not
// serve it yet, during the first rollout with TLS, still accepts).
func sslParams(shard string, verify bool) string {
	if verify {
		return "sslmode=verify-full&sslrootcert=" + CAMount + "/" + shard + ".crt"
	}
	return "sslmode=prefer"
}

// CertManagerCertificate asks cert-manager (mode CertManager) for the shard's server
// certificate, in the Secret the instances mount; the Secret carries the shard's
// labels, so the operator's cache sees it.
func CertManagerCertificate(shard *v1alpha1.LedgerShard) *unstructured.Unstructured {
	ref := shard.Spec.TLS.IssuerRef
	if ref == nil {
		ref = &v1alpha1.IssuerRef{}
	}
	issuer := map[string]any{"name": ref.Name, "kind": cmp.Or(ref.Kind, "Issuer"), "group": cmp.Or(ref.Group, "cert-manager.io")}
	var dns, ips []any
	for _, n := range CertNames(shard) {
		if net.ParseIP(n) != nil {
			ips = append(ips, n)
		} else {
			dns = append(dns, n)
		}
	}
	labels := map[string]any{}
	for k, v := range ShardLabels(shard, ComponentPostgres) {
		labels[k] = v
	}
	t := true
	owner, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(ptrTo(ownerRef(shard.Name, shard.UID, "LedgerShard", &t)))
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
		"metadata": map[string]any{"name": SecretTLS(shard.Name), "namespace": shard.Namespace, "labels": labels, "ownerReferences": []any{owner}},
		"spec": map[string]any{
			"secretName": SecretTLS(shard.Name), "secretTemplate": map[string]any{"labels": labels},
			"commonName": dns[0], "dnsNames": dns, "ipAddresses": ips,
			"duration": ServerValidity.String(), "renewBefore": (ServerValidity / 3).String(),
			"privateKey": map[string]any{"algorithm": "ECDSA", "size": int64(256), "rotationPolicy": "Always"},
			"usages":     []any{"server auth", "client auth", "digital signature"},
			"issuerRef":  issuer,
		},
	}}
}

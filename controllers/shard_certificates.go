package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/internal/pki"
)

// reconcileCertificates keeps the shard's server certificate (Secret <shard>-tls)
// issued by the cluster's CA (or asks cert-manager for it), naming the shard's Services and instances, and renews it
// with a third of its life left. The instance managers serve a renewed certificate
// without a restart once the kubelet has updated their mounted Secret.
func (r *ShardReconciler) reconcileCertificates(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	switch shard.Spec.TLS.Mode {
	case v1alpha1.TLSDisabled:
		return nil
	case v1alpha1.TLSCertManager:
		// cert-manager issues and renews it into the Secret; the instances wait for it.
		return applyUnstructured(ctx, r.Client, specs.CertManagerCertificate(shard))
	}
	ca, err := clusterCA(ctx, r.Client, shard)
	if err != nil {
		return err
	}
	names := specs.CertNames(shard)
	var have corev1.Secret
	err = r.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: specs.SecretTLS(shard.Name)}, &have)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	why := "none yet"
	if err == nil {
		why = ca.Renew(have.Data[corev1.TLSCertKey], names, time.Now())
		if why == "" && !pki.Same(have.Data[corev1.ServiceAccountRootCAKey], ca.CertPEM) {
			why = "the CA changed"
		}
		if why == "" {
			return nil
		}
	}
	cert, key, err := ca.Issue(names, specs.ServerValidity, time.Now())
	if err != nil {
		return err
	}
	secret := specs.TLSSecret(shard, cert, key, ca.CertPEM)
	if have.Name == "" {
		err = r.Create(ctx, secret, client.FieldOwner(FieldOwner))
	} else {
		secret.ResourceVersion = have.ResourceVersion
		err = r.Update(ctx, secret, client.FieldOwner(FieldOwner))
	}
	if err != nil {
		return fmt.Errorf("server certificate of %s: %w", shard.Name, err)
	}
	r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "CertificateIssued", "Issue", "issued the server certificate (%s)", why)
	return nil
}

// clusterCA reads the cluster's CA, creating it the first time, owned by the
// LedgerCluster so it goes with the cluster (by nothing for a shard made by hand
// without one).
func clusterCA(ctx context.Context, c client.Client, shard *v1alpha1.LedgerShard) (*pki.CA, error) {
	key := types.NamespacedName{Namespace: shard.Namespace, Name: specs.SecretCA(shard.Spec.Cluster)}
	var secret corev1.Secret
	err := c.Get(ctx, key, &secret)
	if apierrors.IsNotFound(err) {
		cluster := v1alpha1.LedgerCluster{}
		cluster.Name, cluster.Namespace = shard.Spec.Cluster, shard.Namespace
		if err := c.Get(ctx, client.ObjectKeyFromObject(&cluster), &cluster); err != nil && !apierrors.IsNotFound(err) {
			return nil, err
		}
		ca, err := pki.NewCA("tally "+shard.Namespace+"/"+shard.Spec.Cluster, specs.CAValidity, time.Now())
		if err != nil {
			return nil, err
		}
		err = c.Create(ctx, specs.CASecret(&cluster, ca.CertPEM, ca.KeyPEM), client.FieldOwner(FieldOwner))
		if err == nil {
			return ca, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create the CA of %s: %w", shard.Spec.Cluster, err)
		}
		if err := c.Get(ctx, key, &secret); err != nil { // another shard made it first
			return nil, fmt.Errorf("the CA of %s: %w", shard.Spec.Cluster, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("the CA of %s: %w", shard.Spec.Cluster, err)
	}
	ca, err := pki.ParseCA(secret.Data[corev1.ServiceAccountRootCAKey], secret.Data[specs.CAKey])
	if err != nil {
		return nil, fmt.Errorf("the CA of %s (Secret %s): %w", shard.Spec.Cluster, key.Name, err)
	}
	return ca, nil
}

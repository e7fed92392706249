package controllers_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// The operator's cache holds only what it made: a Secret of someone else's in the same
// namespace is not in it, the shard's credentials are.
func TestCacheHoldsOnlyTallyObjects(t *testing.T) {
	ns := newNamespace(t)
	foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "someone-elses"}, StringData: map[string]string{"k": "v"}}
	if err := k8s.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	createCluster(t, ns, "cached", 1, func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(1) })
	eventually(t, "the shard's credentials in the cache", func() error {
		return cached.Get(ctx, types.NamespacedName{Namespace: ns, Name: specs.SecretApp("cached-0")}, &corev1.Secret{})
	})
	if err := cached.Get(ctx, types.NamespacedName{Namespace: ns, Name: "someone-elses"}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Errorf("a Secret the operator did not make is in its cache: %v", err)
	}
}

// A step that fails reaches the object's status as Degraded/ReconcileError, naming the
// step (here: a volume of the instance's name already exists with other access modes, so
// applying the shard's volume is refused), and is cleared once the cause is gone.
func TestFailingStepIsReportedInStatus(t *testing.T) {
	ns := newNamespace(t)
	squatter := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: specs.InstanceName("bad-0", 1)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	if err := k8s.Create(ctx, squatter); err != nil {
		t.Fatal(err)
	}
	createCluster(t, ns, "bad", 1, func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(1) })
	degraded := func() (*metav1.Condition, error) {
		var s v1alpha1.LedgerShard
		if err := get(ns, "bad-0", &s); err != nil {
			return nil, err
		}
		return meta.FindStatusCondition(s.Status.Conditions, v1alpha1.ConditionDegraded), nil
	}
	eventually(t, "Degraded/ReconcileError on the shard", func() error {
		c, err := degraded()
		if err != nil {
			return err
		}
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonReconcileError || !strings.Contains(c.Message, "instances") {
			return fmt.Errorf("degraded %+v", c)
		}
		return nil
	})
	if err := k8s.Delete(ctx, squatter); err != nil {
		t.Fatal(err)
	}
	// No controller here removes the volume's protection finalizer; play it.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var p corev1.PersistentVolumeClaim
		if err := get(ns, squatter.Name, &p); err != nil {
			return client.IgnoreNotFound(err)
		}
		p.Finalizers = nil
		return k8s.Update(ctx, &p)
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "cleared once the cause is gone", func() error {
		c, err := degraded()
		if err != nil {
			return err
		}
		if c == nil || c.Reason == v1alpha1.ReasonReconcileError {
			return errors.New("still " + fmt.Sprint(c))
		}
		return nil
	})
}

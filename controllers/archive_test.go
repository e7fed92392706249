package controllers_test

import (
	"errors"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// TestRetentionRunsAnArchiver: with spec.retention each shard gets an archive volume at
// once and, once its schema is current, a CronJob running tally archive run with the
// months kept; without retention the CronJob goes and the volume, which may hold the only
// copy of old history, stays.
func TestRetentionRunsAnArchiver(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "kept", 1, func(c *v1alpha1.LedgerCluster) {
		c.Spec.Retention = &v1alpha1.RetentionSpec{Months: 13, Schedule: "0 4 * * 0", Storage: v1alpha1.ArchiveStorage{Size: resource.MustParse("5Gi")}}
	})
	shard := specs.ShardName("kept", 0)
	var pvc corev1.PersistentVolumeClaim
	waitFor(t, ns, specs.ArchiveName(shard), &pvc)
	if got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; got.String() != "5Gi" || len(pvc.OwnerReferences) != 0 {
		t.Errorf("archive volume: %s, owners %v (retained by default)", got.String(), pvc.OwnerReferences)
	}
	var cj batchv1.CronJob
	if err := get(ns, specs.ArchiveName(shard), &cj); !apierrors.IsNotFound(err) {
		t.Errorf("the archiver exists before the schema is current: %v", err)
	}
	bringUpShard(t, ns, shard)
	waitFor(t, ns, specs.ArchiveName(shard), &cj)
	c := cj.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
	if cj.Spec.Schedule != "0 4 * * 0" || cj.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent ||
		len(c.Command) < 6 || c.Command[1] != "archive" || c.Command[len(c.Command)-1] != "13" {
		t.Errorf("archiver: schedule %q, policy %s, command %v", cj.Spec.Schedule, cj.Spec.ConcurrencyPolicy, c.Command)
	}
	update(t, ns, "kept", &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) { c.Spec.Retention = nil })
	eventually(t, "the archiver removed", func() error {
		if err := get(ns, specs.ArchiveName(shard), &cj); !apierrors.IsNotFound(err) {
			return errors.Join(errors.New("still there"), err)
		}
		return nil
	})
	if err := get(ns, specs.ArchiveName(shard), &pvc); err != nil {
		t.Errorf("the archive volume went with the archiver: %v", err)
	}
}

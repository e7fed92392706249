package controllers_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// withAccount gives the shard a real database holding one account, for the counter.
func withAccount(t *testing.T, ns, shard string, index int) {
	t.Helper()
	db := pgtest.NewShardDB(t, index)
	shardDSNs.Store(ns+"/"+shard, db.SuperDSN())
	st := store.New(db.AppPool(t, 2))
	ext, _ := ledger.NewAccountID(index)
	if _, _, _, err := st.RegisterAsset(ctx, "USD", 2, ext); err != nil {
		t.Fatal(err)
	}
	acc, _ := ledger.NewAccountID(index)
	if _, err := st.CreateAccount(ctx, ledger.Account{ID: acc, Owner: "o", Asset: "USD"}); err != nil {
		t.Fatal(err)
	}
}

// waitProtected waits for the shard's protection finalizer and returns the shard.
func waitProtected(t *testing.T, ns, name string) v1alpha1.LedgerShard {
	t.Helper()
	var shard v1alpha1.LedgerShard
	eventually(t, "protection finalizer on "+name, func() error {
		if err := get(ns, name, &shard); err != nil {
			return err
		}
		if !controllerutil.ContainsFinalizer(&shard, specs.FinalizerShardProtection) {
			return errors.New("no finalizer")
		}
		return nil
	})
	return shard
}

func waitAccounts(t *testing.T, ns, shard string) {
	t.Helper()
	eventually(t, shard+" counted", func() error {
		var s v1alpha1.LedgerShard
		if err := get(ns, shard, &s); err != nil {
			return err
		}
		if s.Status.Accounts == nil || *s.Status.Accounts != 1 {
			return fmt.Errorf("accounts %v", s.Status.Accounts)
		}
		return nil
	})
}

// Under the default policy (Retain) a shard's volumes and credentials are owned by
// nothing, so no delete can take them; a LedgerShard deleted by hand while its cluster
// lists it and it holds accounts waits and keeps serving; deleting the cluster lets it go
// and leaves the volumes and credentials for a cluster created again under that name.
func TestRetainKeepsVolumesAndBlocksHandDeletion(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "keep", 1, func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(1) })
	withAccount(t, ns, "keep-0", 0)
	bringUpShard(t, ns, "keep-0")
	waitAccounts(t, ns, "keep-0")
	pvcName := specs.InstanceName("keep-0", 1)
	var pvc corev1.PersistentVolumeClaim
	eventually(t, "volume owned by nothing", func() error {
		if err := get(ns, pvcName, &pvc); err != nil {
			return err
		}
		if len(pvc.OwnerReferences) > 0 {
			return fmt.Errorf("owners %+v", pvc.OwnerReferences)
		}
		return nil
	})
	for _, name := range []string{specs.SecretSuperuser("keep-0"), specs.SecretApp("keep-0"), specs.SecretReplication("keep-0")} {
		var s corev1.Secret
		waitFor(t, ns, name, &s)
		if len(s.OwnerReferences) > 0 {
			t.Errorf("secret %s owned by %+v under Retain", name, s.OwnerReferences)
		}
	}
	shard := waitProtected(t, ns, "keep-0")

	if err := k8s.Delete(ctx, &shard); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "keep", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonDeletionBlocked)
	expectEvent(t, ns, v1alpha1.ReasonDeletionBlocked)
	if err := get(ns, "keep-0", &shard); err != nil || shard.DeletionTimestamp.IsZero() {
		t.Fatalf("shard: %v %v", err, shard.DeletionTimestamp)
	}
	var pod corev1.Pod
	if err := get(ns, specs.InstanceName("keep-0", 1), &pod); err != nil {
		t.Errorf("the blocked shard's instance is gone: %v", err)
	}

	var cluster v1alpha1.LedgerCluster
	if err := get(ns, "keep", &cluster); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Delete(ctx, &cluster); err != nil {
		t.Fatal(err)
	}
	eventually(t, "shard released once its cluster is gone", func() error {
		if err := get(ns, "keep-0", &shard); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	if err := get(ns, pvcName, &pvc); err != nil || len(pvc.OwnerReferences) > 0 {
		t.Errorf("volume after the cluster went: %v %+v", err, pvc.OwnerReferences)
	}
}

// Under Delete, volumes are owned by their shard. A shard holding accounts deleted by hand
// goes with them once its cluster has recorded the loss; the cluster does not create it
// again empty, says why, and forgets the loss once scaled below it.
func TestDeletePolicyRecordsLostShard(t *testing.T) {
	ns := newNamespace(t)
	createCluster(t, ns, "drop", 2, func(c *v1alpha1.LedgerCluster) {
		c.Spec.Postgres.Instances = int32p(1)
		c.Spec.DeletionPolicy = v1alpha1.DeletionPolicyDelete
	})
	withAccount(t, ns, "drop-1", 1)
	bringUpShard(t, ns, "drop-0")
	bringUpShard(t, ns, "drop-1")
	waitAccounts(t, ns, "drop-1")
	var pvc corev1.PersistentVolumeClaim
	waitFor(t, ns, specs.InstanceName("drop-1", 1), &pvc)
	if err := controlledBy(&pvc, "LedgerShard", "drop-1"); err != nil {
		t.Error(err)
	}
	shard := waitProtected(t, ns, "drop-1")
	if err := k8s.Delete(ctx, &shard); err != nil {
		t.Fatal(err)
	}
	waitCondition(t, ns, "drop", v1alpha1.ConditionDegraded, metav1.ConditionTrue, v1alpha1.ReasonShardLost)
	eventually(t, "lost shard released", func() error {
		if err := get(ns, "drop-1", &shard); !apierrors.IsNotFound(err) {
			return fmt.Errorf("still there: %v", err)
		}
		return nil
	})
	var cluster v1alpha1.LedgerCluster
	if err := get(ns, "drop", &cluster); err != nil || !slices.Equal(cluster.Status.LostShards, []int32{1}) {
		t.Fatalf("lost shards %v: %v", cluster.Status.LostShards, err)
	}
	time.Sleep(500 * time.Millisecond) // a re-creation would happen within a reconcile or two
	if err := get(ns, "drop-1", &shard); !apierrors.IsNotFound(err) {
		t.Fatalf("the lost shard was created again: %v", err)
	}
	scale(t, ns, "drop", 1)
	eventually(t, "loss acknowledged", func() error {
		if err := get(ns, "drop", &cluster); err != nil {
			return err
		}
		if len(cluster.Status.LostShards) > 0 {
			return fmt.Errorf("lost shards %v", cluster.Status.LostShards)
		}
		return nil
	})
	var list v1alpha1.LedgerShardList
	if err := k8s.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) != 1 {
		t.Errorf("shards after the scale-down: %d %v", len(list.Items), err)
	}
}

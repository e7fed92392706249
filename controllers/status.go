package controllers

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// setCondition records one condition for the given generation; its transition time moves
// only when its status does.
func setCondition(conds *[]metav1.Condition, generation int64, typ string, ok bool, reason, msg string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	meta.SetStatusCondition(conds, metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: generation})
}

// writeStatus writes obj's status, whose new value the caller has set, unless unchanged:
// a reconcile of an unchanged object writes nothing. A lost race is retried shortly.
func writeStatus(ctx context.Context, c client.Client, obj client.Object, unchanged bool, result ctrl.Result) (ctrl.Result, error) {
	if unchanged {
		return result, nil
	}
	if err := c.Status().Update(ctx, obj); err != nil {
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: conflictRetry}, nil // someone else wrote it; look again
		}
		return ctrl.Result{}, fmt.Errorf("%s: update status: %w", obj.GetName(), err)
	}
	return result, nil
}

// reportStepError records a failed reconcile step as Degraded/ReconcileError on the
// object's status, so the failure reaches kubectl and GitOps tools rather than only the
// operator's log; the next reconcile whose steps all succeed clears it. It returns err,
// wrapped with the step, for controller-runtime's retry with backoff. The status write is
// best effort: a conflict means someone else wrote, and the retry comes anyway.
func reportStepError(ctx context.Context, c client.Client, obj client.Object, conds *[]metav1.Condition, step string, err error) error {
	err = fmt.Errorf("%s: %s: %w", obj.GetName(), step, err)
	before := meta.FindStatusCondition(*conds, v1alpha1.ConditionDegraded)
	msg := err.Error()
	if before != nil && before.Reason == v1alpha1.ReasonReconcileError && before.Message == msg {
		return err
	}
	setCondition(conds, obj.GetGeneration(), v1alpha1.ConditionDegraded, true, v1alpha1.ReasonReconcileError, msg)
	if werr := c.Status().Update(ctx, obj); werr != nil && !apierrors.IsConflict(werr) && !apierrors.IsNotFound(werr) {
		return fmt.Errorf("%w (and recording it in status: %v)", err, werr)
	}
	return err
}

// Package controllers holds the operator's reconcilers, one per kind. Each Reconcile
// reads as a short list of named steps; the objects they apply are built by the pure
// functions of package specs, and their safety decisions are pure functions in
// decisions.go.
package controllers

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// conflictRetry is how soon a reconcile whose status write lost a race runs again.
const conflictRetry = 200 * time.Millisecond

// FieldOwner is the one field manager every object the operator writes is applied with.
const FieldOwner = "tally-operator"

// apply writes obj with server-side apply. Applying an unchanged object is a no-op on the
// server: nothing is written and no resourceVersion changes.
func apply(ctx context.Context, c client.Client, obj runtime.ApplyConfiguration) error {
	if err := c.Apply(ctx, obj, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	return nil
}

// applyUnstructured applies an object of our own kinds, which have no generated apply
// configurations.
func applyUnstructured(ctx context.Context, c client.Client, u *unstructured.Unstructured) error {
	return apply(ctx, c, client.ApplyConfigurationFromUnstructured(u))
}

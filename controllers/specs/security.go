package specs

import (
	corev1 "k8s.io/api/core/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
)

// Every pod the operator makes meets the Kubernetes "restricted" Pod Security Standard:
// a non-root user, the runtime's default seccomp profile, no privilege escalation, no
// capabilities, and a read-only root filesystem (what a process writes goes to a volume).

// tallyUID runs the tally binary in the ledger and migration pods (the distroless nonroot user).
const tallyUID = 65532

// restrictedPod is a pod's security context, running as uid (and its group, which owns
// the pod's volumes).
func restrictedPod(uid int64) *corev1ac.PodSecurityContextApplyConfiguration {
	return corev1ac.PodSecurityContext().WithRunAsNonRoot(true).WithRunAsUser(uid).WithRunAsGroup(uid).WithFSGroup(uid).
		WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))
}

// restrictedContainer is every container's security context.
func restrictedContainer() *corev1ac.SecurityContextApplyConfiguration {
	return corev1ac.SecurityContext().WithAllowPrivilegeEscalation(false).WithReadOnlyRootFilesystem(true).
		WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))
}

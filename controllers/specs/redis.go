package specs

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// Redis of a cluster (spec.redis).
const (
	ComponentRedis    = "redis"
	RedisPort         = 6379
	DefaultRedisImage = "redis:7"
	redisUID          = 999 // the redis user of the official images
	redisMaxMemory    = "256mb"
	// RedisPasswordEnv carries an external Redis's password to the ledger (never in its
	// arguments, which anyone who may read the pod sees).
	RedisPasswordEnv   = "TALLY_REDIS_PASSWORD"
	redisMemoryRequest = "64Mi"
	// RedisPasswordKey is the key of the managed Redis's password in its Secret.
	RedisPasswordKey = "password"
)

// RedisSecret holds the managed Redis's password, which the operator makes once (named
// RedisName, like the Deployment): Redis asks every client for it.
func RedisSecret(c *v1alpha1.LedgerCluster, password string) *corev1.Secret {
	s := &corev1.Secret{Type: corev1.SecretTypeOpaque, StringData: map[string]string{RedisPasswordKey: password}}
	s.Name, s.Namespace, s.Labels = RedisName(c.Name), c.Namespace, ClusterLabels(c.Name, ComponentRedis)
	t := true
	s.OwnerReferences = []metav1.OwnerReference{ownerRef(c.Name, c.UID, "LedgerCluster", &t)}
	return s
}

// RedisName names a cluster's managed Redis Deployment and Service.
func RedisName(cluster string) string { return cluster + "-redis" }

// redisSelector picks a cluster's managed Redis pod.
func redisSelector(cluster string) map[string]string {
	return map[string]string{LabelCluster: cluster, LabelComponent: ComponentRedis}
}

// RedisDeployment runs the managed Redis: one replica, nothing persisted, the least
// recently used keys evicted when full, under the restricted Pod Security Standard.
func RedisDeployment(c *v1alpha1.LedgerCluster) *appsv1ac.DeploymentApplyConfiguration {
	image := DefaultRedisImage
	if c.Spec.Redis != nil && c.Spec.Redis.Image != "" {
		image = c.Spec.Redis.Image
	}
	labels := ClusterLabels(c.Name, ComponentRedis)
	container := corev1ac.Container().WithName("redis").WithImage(image).
		// Protected mode would refuse every client from another pod: the ledger's are; the
		// password keeps out every pod that does not hold it. Kubernetes writes it into
		// the argument from the environment: the pod's spec never shows it.
		WithCommand("redis-server").WithArgs("--protected-mode", "no", "--requirepass", "$(REDIS_PASSWORD)", "--save", "", "--appendonly", "no",
		"--maxmemory", redisMaxMemory, "--maxmemory-policy", "allkeys-lru", "--dir", "/data").
		WithEnv(secretEnv("REDIS_PASSWORD", RedisName(c.Name), RedisPasswordKey)).
		WithPorts(corev1ac.ContainerPort().WithName("redis").WithContainerPort(RedisPort)).
		WithReadinessProbe(corev1ac.Probe().WithTCPSocket(corev1ac.TCPSocketAction().WithPort(intstr.FromString("redis"))).WithPeriodSeconds(5)).
		WithResources(corev1ac.ResourceRequirements().WithRequests(corev1.ResourceList{corev1.ResourceMemory: resource.MustParse(redisMemoryRequest)})).
		WithVolumeMounts(corev1ac.VolumeMount().WithName("data").WithMountPath("/data")).
		WithSecurityContext(restrictedContainer())
	return appsv1ac.Deployment(RedisName(c.Name), c.Namespace).
		WithLabels(labels).WithOwnerReferences(clusterOwner(c)).
		WithSpec(appsv1ac.DeploymentSpec().WithReplicas(1).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(redisSelector(c.Name))).
			WithTemplate(corev1ac.PodTemplateSpec().WithLabels(labels).WithSpec(corev1ac.PodSpec().
				WithSecurityContext(restrictedPod(redisUID)).WithContainers(container).
				WithVolumes(corev1ac.Volume().WithName("data").WithEmptyDir(corev1ac.EmptyDirVolumeSource())))))
}

// RedisService exposes the managed Redis to the ledger.
func RedisService(c *v1alpha1.LedgerCluster) *corev1ac.ServiceApplyConfiguration {
	return corev1ac.Service(RedisName(c.Name), c.Namespace).
		WithLabels(ClusterLabels(c.Name, ComponentRedis)).WithOwnerReferences(clusterOwner(c)).
		WithSpec(corev1ac.ServiceSpec().WithType(corev1.ServiceTypeClusterIP).WithSelector(redisSelector(c.Name)).
			WithPorts(corev1ac.ServicePort().WithName("redis").WithPort(RedisPort).WithTargetPort(intstr.FromString("redis"))))
}

// ledgerRedis is the ledger's flags and environment for spec.redis and
// spec.ledger.rateLimits.
func ledgerRedis(c *v1alpha1.LedgerCluster) ([]string, []*corev1ac.EnvVarApplyConfiguration) {
	var args []string
	var env []*corev1ac.EnvVarApplyConfiguration
	if rl := c.Spec.Ledger.RateLimits; rl != nil {
		if rl.Writes != "" {
			args = append(args, "--rate-limit-writes="+rl.Writes)
		}
		if rl.Reads != "" {
			args = append(args, "--rate-limit-reads="+rl.Reads)
		}
	}
	r := c.Spec.Redis
	switch {
	case r == nil:
	case r.Managed:
		env = append(env, secretEnv(RedisPasswordEnv, RedisName(c.Name), RedisPasswordKey))
		args = append(args, fmt.Sprintf("--redis-url=redis://%s.%s.svc:%d/0", RedisName(c.Name), c.Namespace, RedisPort))
	default:
		scheme := "redis"
		if r.TLS {
			scheme = "rediss"
		}
		if r.PasswordSecret != nil {
			env = append(env, secretEnv(RedisPasswordEnv, r.PasswordSecret.Name, r.PasswordSecret.Key))
		}
		args = append(args, "--redis-url="+scheme+"://"+r.Address+"/0")
	}
	return args, env
}

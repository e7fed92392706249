package specs

import (
	"cmp"
	"fmt"
	"path"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// ledgerDrainSeconds is how long a ledger pod that is being replaced goes on serving
// before it stops: longer than kube-proxy takes to drop it from the Service.
const ledgerDrainSeconds = 5

func ownerRef(name string, uid types.UID, kind string, controller *bool) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: v1alpha1.GroupVersion.String(), Kind: kind, Name: name, UID: uid,
		Controller: controller, BlockOwnerDeletion: controller}
}

func clusterOwner(c *v1alpha1.LedgerCluster) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(v1alpha1.GroupVersion.String()).WithKind("LedgerCluster").
		WithName(c.Name).WithUID(c.UID).WithController(true).WithBlockOwnerDeletion(true)
}

// Shard builds the LedgerShard for one index of a cluster, as an unstructured apply
// object: only the fields set here are owned, so defaults never appear in its spec.
func Shard(c *v1alpha1.LedgerCluster, index int32, tallyImage string) (*unstructured.Unstructured, error) {
	pg, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&c.Spec.Postgres)
	if err != nil {
		return nil, fmt.Errorf("specs: convert postgres spec: %w", err)
	}
	t := true
	owner, err := runtime.DefaultUnstructuredConverter.ToUnstructured(ptrTo(ownerRef(c.Name, c.UID, "LedgerCluster", &t)))
	if err != nil {
		return nil, err
	}
	labels := map[string]any{}
	for k, v := range ClusterLabels(c.Name, ComponentPostgres) {
		labels[k] = v
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.GroupVersion.String(),
		"kind":       "LedgerShard",
		"metadata": map[string]any{
			"name": ShardName(c.Name, index), "namespace": c.Namespace,
			"labels": labels, "ownerReferences": []any{owner},
		},
		"spec": map[string]any{
			"cluster": c.Name, "index": int64(index), "image": ResolveLedger(c.Spec.Ledger, tallyImage).Image, "postgres": pg,
		},
	}}
	if c.Spec.DeletionPolicy != "" {
		u.Object["spec"].(map[string]any)["deletionPolicy"] = string(c.Spec.DeletionPolicy)
	}
	if c.Spec.NetworkPolicies {
		u.Object["spec"].(map[string]any)["networkPolicies"] = true
	}
	if c.Spec.Events != nil && c.Spec.Events.CDC != nil && c.Spec.Events.CDC.Enabled {
		u.Object["spec"].(map[string]any)["cdc"] = true
	}
	if c.Spec.Retention != nil {
		retention, err := runtime.DefaultUnstructuredConverter.ToUnstructured(c.Spec.Retention)
		if err != nil {
			return nil, fmt.Errorf("specs: convert retention spec: %w", err)
		}
		u.Object["spec"].(map[string]any)["retention"] = retention
	}
	if c.Spec.TLS != (v1alpha1.TLSSpec{}) {
		tlsSpec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&c.Spec.TLS)
		if err != nil {
			return nil, fmt.Errorf("specs: convert tls spec: %w", err)
		}
		u.Object["spec"].(map[string]any)["tls"] = tlsSpec
	}
	return u, nil
}

func ptrTo[T any](v T) *T { return &v }

// ShardURLs is the ledger's shard map: one URL per shard, in index order, through each
// shard's -rw service, verifying its certificate where verify[i] says the shard serves
// TLS. Passwords come from environment variables the Deployment sets from each shard's
// app Secret (Kubernetes expands $(VAR) in env values).
func ShardURLs(c *v1alpha1.LedgerCluster, shards int32, verify []bool) string {
	return shardURLsAs(c, AppUser, shards, verify)
}

// shardURLsAs is ShardURLs for another login; shard i's password is in $SHARDi_PASSWORD.
func shardURLsAs(c *v1alpha1.LedgerCluster, user string, shards int32, verify []bool) string {
	urls := make([]string, shards)
	for i := range shards {
		shard := ShardName(c.Name, i)
		urls[i] = fmt.Sprintf("postgres://%s:$(SHARD%d_PASSWORD)@%s.%s.svc:%d/%s?%s",
			user, i, ServiceRW(shard), c.Namespace, PostgresPort, Database, sslParams(shard, int(i) < len(verify) && verify[i]))
	}
	return strings.Join(urls, ",")
}

// batchingArgs are the ledger's flags for the batching fields that are set.
func batchingArgs(b v1alpha1.BatchingSpec) []string {
	var args []string
	for _, f := range []struct {
		flag  string
		value *int32
	}{{"writers", b.Writers}, {"max-batch", b.MaxBatch}, {"readers", b.Readers}} {
		if f.value != nil {
			args = append(args, fmt.Sprintf("--%s=%d", f.flag, *f.value))
		}
	}
	if b.Linger != nil {
		args = append(args, "--linger="+b.Linger.Duration.String())
	}
	return args
}

// LedgerShards are the shards the ledger serves, as its Deployment needs them.
type LedgerShards struct {
	// Count: the ledger serves shards 0 to Count-1.
	Count int32
	// Verify[i] says shard i serves TLS, so the ledger requires it there.
	Verify []bool
	// CAHash identifies the CAs the ledger trusts: a new CA rolls the ledger, which
	// reads them when it starts.
	CAHash string
}

// AnnotationCAHash records LedgerShards.CAHash on the ledger's pods.
const AnnotationCAHash = "ledger.tally.dev/ca-hash"

// LedgerDeployment builds the ledger service over the shards.
func LedgerDeployment(c *v1alpha1.LedgerCluster, ls LedgerShards, operatorImage string) *appsv1ac.DeploymentApplyConfiguration {
	shards, verify := ls.Count, ls.Verify
	l := ResolveLedger(c.Spec.Ledger, operatorImage)
	labels := ClusterLabels(c.Name, ComponentLedger)
	env := make([]*corev1ac.EnvVarApplyConfiguration, 0, shards+1)
	for i := range shards {
		env = append(env, secretEnv(fmt.Sprintf("SHARD%d_PASSWORD", i), SecretApp(ShardName(c.Name, i)), corev1.BasicAuthPasswordKey))
	}
	env = append(env, corev1ac.EnvVar().WithName("TALLY_SHARD_URLS").WithValue(ShardURLs(c, shards, verify)))
	args := []string{"ledger", "serve",
		"--listen=0.0.0.0:" + strconv.Itoa(APIPort), "--grpc-listen=0.0.0.0:" + strconv.Itoa(GRPCPort), "--ops-listen=0.0.0.0:" + strconv.Itoa(OpsPort),
		"--idempotency-retention=" + l.IdempotencyRetention.Duration.String()}
	args = append(args, batchingArgs(l.Batching)...)
	container := corev1ac.Container().WithName("ledger").WithImage(l.Image).
		WithCommand(TallyBinary).WithArgs(args...).WithEnv(env...).
		WithPorts(corev1ac.ContainerPort().WithName("api").WithContainerPort(APIPort),
			corev1ac.ContainerPort().WithName("grpc").WithContainerPort(GRPCPort),
			corev1ac.ContainerPort().WithName("metrics").WithContainerPort(OpsPort)).
		WithReadinessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString("metrics"))).WithPeriodSeconds(5)).
		WithLivenessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("metrics"))).WithPeriodSeconds(10)).
		// A replaced pod keeps serving while its address leaves every node's Service rules:
		// stopped at once, the connections opened meanwhile to it would hang unanswered.
		WithLifecycle(corev1ac.Lifecycle().WithPreStop(corev1ac.LifecycleHandler().WithSleep(corev1ac.SleepAction().WithSeconds(ledgerDrainSeconds)))).
		WithSecurityContext(restrictedContainer())
	if l.Resources.Requests != nil {
		container = container.WithResources(corev1ac.ResourceRequirements().WithRequests(l.Resources.Requests).WithLimits(l.Resources.Limits))
	}
	podSpec := corev1ac.PodSpec().WithSecurityContext(restrictedPod(tallyUID))
	authArgs, mounts, volumes := ledgerAuth(c)
	redisArgs, redisEnv := ledgerRedis(c)
	authArgs = append(authArgs, redisArgs...)
	container = container.WithEnv(redisEnv...)
	var verified []string
	for i, v := range verify {
		if v {
			verified = append(verified, ShardName(c.Name, int32(i)))
		}
	}
	if len(verified) > 0 {
		vol, mount := caVolume(verified...)
		mounts, volumes = append(mounts, mount), append(volumes, vol)
	}
	if c.Spec.Ledger.TLSSecret != nil {
		dir := path.Join(authDir, "api-tls")
		authArgs = append(authArgs, "--tls-cert-file="+path.Join(dir, corev1.TLSCertKey), "--tls-key-file="+path.Join(dir, corev1.TLSPrivateKeyKey))
		mounts = append(mounts, corev1ac.VolumeMount().WithName("api-tls").WithMountPath(dir).WithReadOnly(true))
		volumes = append(volumes, corev1ac.Volume().WithName("api-tls").WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(c.Spec.Ledger.TLSSecret.Name).WithItems(
			corev1ac.KeyToPath().WithKey(corev1.TLSCertKey).WithPath(corev1.TLSCertKey),
			corev1ac.KeyToPath().WithKey(corev1.TLSPrivateKeyKey).WithPath(corev1.TLSPrivateKeyKey))))
	}
	container = container.WithArgs(authArgs...).WithVolumeMounts(mounts...)
	podSpec = podSpec.WithVolumes(volumes...)
	podSpec = podSpec.WithContainers(container)
	template := corev1ac.PodTemplateSpec().WithLabels(labels)
	if ls.CAHash != "" {
		template = template.WithAnnotations(map[string]string{AnnotationCAHash: ls.CAHash})
	}
	return appsv1ac.Deployment(LedgerName(c.Name), c.Namespace).
		WithLabels(labels).WithOwnerReferences(clusterOwner(c)).
		WithSpec(appsv1ac.DeploymentSpec().WithReplicas(l.Replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(LedgerSelector(c.Name))).
			WithStrategy(appsv1ac.DeploymentStrategy().WithType(appsv1.RollingUpdateDeploymentStrategyType)).
			WithTemplate(template.WithSpec(podSpec)))
}

// authDir holds the ledger's credentials files, a volume each.
const authDir = "/etc/tally"

// ledgerAuth is the ledger's authentication flags for spec.auth (and the old
// spec.ledger.tokensSecret), with the Secrets they read mounted a volume each.
func ledgerAuth(c *v1alpha1.LedgerCluster) ([]string, []*corev1ac.VolumeMountApplyConfiguration, []*corev1ac.VolumeApplyConfiguration) {
	var (
		args    []string
		mounts  []*corev1ac.VolumeMountApplyConfiguration
		volumes []*corev1ac.VolumeApplyConfiguration
	)
	file := func(flag, volume string, s corev1.SecretKeySelector) {
		dir := path.Join(authDir, volume)
		args = append(args, "--"+flag+"="+path.Join(dir, s.Key))
		mounts = append(mounts, corev1ac.VolumeMount().WithName(volume).WithMountPath(dir).WithReadOnly(true))
		volumes = append(volumes, corev1ac.Volume().WithName(volume).
			WithSecret(corev1ac.SecretVolumeSource().WithSecretName(s.Name).WithItems(corev1ac.KeyToPath().WithKey(s.Key).WithPath(s.Key))))
	}
	a := c.Spec.Auth
	if a == nil {
		a = &v1alpha1.AuthSpec{}
	}
	if tokens := cmp.Or(a.TokensSecret, c.Spec.Ledger.TokensSecret); tokens != nil {
		file("tokens-file", "tokens", *tokens)
	}
	if j := a.JWT; j != nil {
		args = append(args, "--jwt-issuer="+j.Issuer, "--jwt-audience="+j.Audience)
		if j.JWKSURL != "" {
			args = append(args, "--jwks-url="+j.JWKSURL)
		}
		if j.JWKSSecret != nil {
			file("jwks-file", "jwks", *j.JWKSSecret)
		}
		if j.RoleClaim != "" {
			args = append(args, "--jwt-role-claim="+j.RoleClaim)
		}
	}
	return args, mounts, volumes
}

// LedgerService exposes the HTTP and gRPC APIs and the metrics port.
func LedgerService(c *v1alpha1.LedgerCluster) *corev1ac.ServiceApplyConfiguration {
	return corev1ac.Service(LedgerName(c.Name), c.Namespace).
		WithLabels(ClusterLabels(c.Name, ComponentLedger)).WithOwnerReferences(clusterOwner(c)).
		WithSpec(corev1ac.ServiceSpec().WithType(corev1.ServiceTypeClusterIP).WithSelector(LedgerSelector(c.Name)).
			WithPorts(
				corev1ac.ServicePort().WithName("api").WithPort(APIPort).WithTargetPort(intstr.FromString("api")),
				corev1ac.ServicePort().WithName("grpc").WithPort(GRPCPort).WithTargetPort(intstr.FromString("grpc")),
				corev1ac.ServicePort().WithName("metrics").WithPort(OpsPort).WithTargetPort(intstr.FromString("metrics")),
			))
}

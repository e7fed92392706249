package specs

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// The event relay of a cluster (spec.events.kafka).
const (
	DefaultEventsTopic   = "tally.events"
	DefaultRelayReplicas = 2
	// KafkaPasswordEnv carries the relay's SASL password (never in its arguments).
	KafkaPasswordEnv = "TALLY_KAFKA_PASSWORD"
	// RelayShardURLsEnv lists the relay's shard URLs, comma-separated, in shard order.
	RelayShardURLsEnv = "TALLY_RELAY_SHARD_URLS"
	// RelayPasswordEnv carries the relay login's password to the migration Job.
	RelayPasswordEnv = "TALLY_RELAY_PASSWORD"
	kafkaDir         = "/etc/tally/kafka"
)

// RelayName names a cluster's relay Deployment.
func RelayName(cluster string) string { return cluster + "-relay" }

// RelaySelector picks a cluster's relay pods.
func RelaySelector(cluster string) map[string]string {
	return map[string]string{LabelCluster: cluster, LabelComponent: ComponentRelay}
}

// RelayDeployment runs `tally relay` over the shards, as each shard's relay login, into
// spec.events.kafka. Its replicas take turns per shard: one publishes, the others stand
// by and take over within seconds.
func RelayDeployment(c *v1alpha1.LedgerCluster, ls LedgerShards, operatorImage string) *appsv1ac.DeploymentApplyConfiguration {
	k := c.Spec.Events.Kafka
	labels := ClusterLabels(c.Name, ComponentRelay)
	topic := k.Topic
	if topic == "" {
		topic = DefaultEventsTopic
	}
	replicas := int32(DefaultRelayReplicas)
	if k.Replicas != nil {
		replicas = *k.Replicas
	}
	env := make([]*corev1ac.EnvVarApplyConfiguration, 0, ls.Count+2)
	for i := range ls.Count {
		env = append(env, secretEnv(fmt.Sprintf("SHARD%d_PASSWORD", i), SecretRelay(ShardName(c.Name, i)), corev1.BasicAuthPasswordKey))
	}
	env = append(env, corev1ac.EnvVar().WithName(RelayShardURLsEnv).WithValue(shardURLsAs(c, RelayUser, ls.Count, ls.Verify)))
	args := []string{"relay", "--ops-listen=0.0.0.0:" + strconv.Itoa(OpsPort),
		"--brokers=" + strings.Join(k.Brokers, ","), "--topic=" + topic}
	var mounts []*corev1ac.VolumeMountApplyConfiguration
	var volumes []*corev1ac.VolumeApplyConfiguration
	if t := k.TLS; t != nil {
		args = append(args, "--kafka-tls")
		if t.CA != nil {
			dir := path.Join(kafkaDir, "ca")
			args = append(args, "--kafka-ca-file="+path.Join(dir, "ca.crt"))
			mounts = append(mounts, corev1ac.VolumeMount().WithName("kafka-ca").WithMountPath(dir).WithReadOnly(true))
			volumes = append(volumes, corev1ac.Volume().WithName("kafka-ca").WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(t.CA.Name).WithItems(corev1ac.KeyToPath().WithKey(t.CA.Key).WithPath("ca.crt"))))
		}
		if t.ClientSecret != nil {
			dir := path.Join(kafkaDir, "client")
			args = append(args, "--kafka-cert-file="+path.Join(dir, corev1.TLSCertKey), "--kafka-key-file="+path.Join(dir, corev1.TLSPrivateKeyKey))
			mounts = append(mounts, corev1ac.VolumeMount().WithName("kafka-client").WithMountPath(dir).WithReadOnly(true))
			volumes = append(volumes, corev1ac.Volume().WithName("kafka-client").WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(t.ClientSecret.Name).WithItems(
				corev1ac.KeyToPath().WithKey(corev1.TLSCertKey).WithPath(corev1.TLSCertKey),
				corev1ac.KeyToPath().WithKey(corev1.TLSPrivateKeyKey).WithPath(corev1.TLSPrivateKeyKey))))
		}
	}
	if s := k.SASL; s != nil {
		args = append(args, "--kafka-sasl="+s.Mechanism, "--kafka-user="+s.User)
		env = append(env, secretEnv(KafkaPasswordEnv, s.PasswordSecret.Name, s.PasswordSecret.Key))
	}
	var verified []string
	for i, v := range ls.Verify {
		if v {
			verified = append(verified, ShardName(c.Name, int32(i)))
		}
	}
	if len(verified) > 0 {
		vol, mount := caVolume(verified...)
		mounts, volumes = append(mounts, mount), append(volumes, vol)
	}
	container := corev1ac.Container().WithName("relay").WithImage(ResolveLedger(c.Spec.Ledger, operatorImage).Image).
		WithCommand(TallyBinary).WithArgs(args...).WithEnv(env...).WithVolumeMounts(mounts...).
		WithPorts(corev1ac.ContainerPort().WithName("metrics").WithContainerPort(OpsPort)).
		WithLivenessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("metrics"))).WithPeriodSeconds(10)).
		WithSecurityContext(restrictedContainer())
	template := corev1ac.PodTemplateSpec().WithLabels(labels)
	if ls.CAHash != "" {
		template = template.WithAnnotations(map[string]string{AnnotationCAHash: ls.CAHash})
	}
	return appsv1ac.Deployment(RelayName(c.Name), c.Namespace).
		WithLabels(labels).WithOwnerReferences(clusterOwner(c)).
		WithSpec(appsv1ac.DeploymentSpec().WithReplicas(replicas).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(RelaySelector(c.Name))).
			WithTemplate(template.WithSpec(corev1ac.PodSpec().WithSecurityContext(restrictedPod(tallyUID)).
				WithContainers(container).WithVolumes(volumes...))))
}

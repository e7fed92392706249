#!/usr/bin/env bash
# A single-node Kubernetes on this machine, for `make e2e-local`: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet and kube-proxy built from the Go module
# proxy (hack/envtest-binaries.sh), Debian's containerd, runc and CNI plugins, CoreDNS on the
# host answering cluster names, and static hostPath volumes. Needs root.
#
#   hack/local-cluster.sh up      start it (state under $STATE); prints the kubeconfig path
#   hack/local-cluster.sh down    stop it and put the host back as `up` found it: processes,
#                                 mounts, network namespaces, the bridge, iptables, sysctls
#
# Traffic stays on loopback and the cluster's bridge (tally0, 10.203.0.1/24; Services in
# 10.204.0.0/24). Facts this rests on: this kernel mounts cgroup v1 (kubelet failCgroupV1:
# false); containerd 1.6 lacks the RuntimeConfig call Kubernetes 1.38 needs, so 1.37; root
# here lacks CAP_SYS_RESOURCE (containerd restrict_oom_score_adj).
set -euo pipefail

STATE=${STATE:-/tmp/tally-local-cluster}
CACHE=${TALLY_CACHE:-$HOME/.cache/tally}
K8S_VERSION=${K8S_VERSION:-1.37.2}
COREDNS_VERSION=${COREDNS_VERSION:-1.14.7}
NODE=tally-node
BRIDGE=tally0
NODE_IP=10.203.0.1
POD_CIDR=10.203.0.0/24
SERVICE_CIDR=10.204.0.0/24
API=https://$NODE_IP:6443
ETCD_PORT=23790
PAUSE_IMAGE=registry.k8s.io/pause:3.10
PVS=${PVS:-16}
root=$(cd "$(dirname "$0")/.." && pwd)
# the host settings kubelet, kube-proxy and the CNI bridge change, restored by `down`
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

log() { echo "hack/local-cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# wait_for <what> <seconds> <command...>: retries until the command succeeds, or shows the
# log of what it waited for and fails.
wait_for() {
  local what=$1 secs=$2
  shift 2
  local i
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "gave up after ${secs}s waiting for $what"
  [[ -f $STATE/logs/$what.log ]] && tail -30 "$STATE/logs/$what.log" >&2
  return 1
}

# start <name> <command...>: a background process with its log and pid under $STATE.
start() {
  local name=$1
  shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/pids/$name"
}

binaries() {
  K8S="$("$root/hack/envtest-binaries.sh")"
  COREDNS=$CACHE/coredns-$COREDNS_VERSION/coredns
  [[ -x $COREDNS ]] || build_coredns
  local pkg
  for pkg in containerd runc containernetworking-plugins iptables conntrack; do
    dpkg -s "$pkg" >/dev/null 2>&1 && continue
    log "installing Debian's $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; }
  done
}

# CoreDNS with only the plugins the cluster needs, the way CoreDNS documents external builds.
build_coredns() {
  local work
  work=$(mktemp -d)
  log "building CoreDNS v$COREDNS_VERSION from the module proxy (a few minutes, once)"
  (
    cd "$work"
    printf 'module corednsbuild\n\ngo 1.26\n' >go.mod
    cat >main.go <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

func init() { dnsserver.Directives = []string{"bind", "errors", "cache", "kubernetes"} }

func main() { coremain.Run() }
GO
    go get "github.com/coredns/coredns@v$COREDNS_VERSION" >/dev/null 2>&1
    go mod tidy >/dev/null 2>&1
    mkdir -p "$(dirname "$COREDNS")"
    go build -trimpath -ldflags "-s -w" -o "$COREDNS.tmp" . && mv "$COREDNS.tmp" "$COREDNS"
  )
  rm -rf "$work"
}

save_host() {
  mkdir -p "$STATE/saved"
  [[ -f $STATE/saved/sysctl ]] && return
  local k
  for k in "${SYSCTLS[@]}"; do
    [[ -e /proc/sys/${k//.//} ]] && echo "$k=$(sysctl -n "$k")"
  done >"$STATE/saved/sysctl"
  iptables-save >"$STATE/saved/iptables"
  ip6tables-save >"$STATE/saved/ip6tables"
  ip netns list 2>/dev/null | awk '{print $1}' | sort >"$STATE/saved/netns"
  local d
  for d in /var/log/containers /var/log/pods; do
    [[ -d $d ]] || echo "$d"
  done >"$STATE/saved/new-dirs"
}

pki() {
  local d=$STATE/pki
  mkdir -p "$d"
  [[ -f $d/ca.crt ]] && return
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=tally-local-ca \
    -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  # cert <name> <subject> [subjectAltName]
  cert() {
    local ext
    ext=$(mktemp)
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n' >"$ext"
    if [[ -n ${3:-} ]]; then
      printf 'extendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3" >>"$ext"
    else
      printf 'extendedKeyUsage=clientAuth\n' >>"$ext"
    fi
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 30 \
      -extfile "$ext" -out "$d/$1.crt" 2>/dev/null
    rm -f "$ext" "$d/$1.csr"
  }
  cert apiserver /CN=kube-apiserver \
    "IP:$NODE_IP,IP:127.0.0.1,IP:${SERVICE_CIDR%0/24}1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=tally-admin"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE"
  openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
  openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  kubeconfig admin >"$STATE/kubeconfig"
  kubeconfig kubelet >"$STATE/kubelet.kubeconfig"
}

# kubeconfig <client cert name>
kubeconfig() {
  local d=$STATE/pki
  cat <<YAML
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$API", certificate-authority: "$d/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$d/$1.crt", client-key: "$d/$1.key"}
contexts:
- name: local
  context: {cluster: local, user: $1}
current-context: local
YAML
}

bridge() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip addr show dev "$BRIDGE" | grep -q "$NODE_IP/" || ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

control_plane() {
  local d=$STATE/pki
  start etcd "$K8S/etcd" --data-dir "$STATE/etcd" --name local \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls http://127.0.0.1:$((ETCD_PORT + 1)) --initial-advertise-peer-urls http://127.0.0.1:$((ETCD_PORT + 1)) \
    --initial-cluster "local=http://127.0.0.1:$((ETCD_PORT + 1))"
  wait_for etcd 60 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  start kube-apiserver "$K8S/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
    --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode Node,RBAC \
    --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" --client-ca-file "$d/ca.crt" \
    --kubelet-client-certificate "$d/admin.crt" --kubelet-client-key "$d/admin.key" \
    --service-account-key-file "$d/sa.pub" --service-account-signing-key-file "$d/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --kubelet-preferred-address-types InternalIP
  wait_for kube-apiserver 120 kctl get --raw /readyz
  start kube-controller-manager "$K8S/kube-controller-manager" --kubeconfig "$STATE/kubeconfig" \
    --service-account-private-key-file "$d/sa.key" --root-ca-file "$d/ca.crt" \
    --bind-address 127.0.0.1 --leader-elect=false --allocate-node-cidrs=false
  start kube-scheduler "$K8S/kube-scheduler" --kubeconfig "$STATE/kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false
}

node() {
  local d=$STATE/pki c=$STATE/containerd
  mkdir -p "$c" "$STATE/cni/net.d" "$STATE/kubelet" "$STATE/pod-logs"
  cat >"$c/config.toml" <<TOML
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
TOML
  cat >"$STATE/cni/net.d/10-tally.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "tally", "plugins": [{
  "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
    "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "${NODE_IP%1}10", "gateway": "$NODE_IP"}]],
    "routes": [{"dst": "0.0.0.0/0"}]}}]}
JSON
  start containerd containerd --config "$c/config.toml"
  wait_for containerd 60 ctr --address "$c/containerd.sock" version
  "$root/hack/local-images.sh" "$c/containerd.sock" "$TALLY_IMAGE" "$POSTGRES_IMAGE" "$PAUSE_IMAGE"

  cat >"$STATE/Corefile" <<COREFILE
.:53 {
  bind $NODE_IP
  errors
  cache 5
  kubernetes cluster.local in-addr.arpa ip6.arpa {
    kubeconfig $STATE/kubeconfig local
    pods insecure
    fallthrough in-addr.arpa ip6.arpa
  }
}
COREFILE
  start coredns "$COREDNS" -conf "$STATE/Corefile"

  : >"$STATE/resolv.conf"
  cat >"$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$d/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
containerRuntimeEndpoint: unix://$c/containerd.sock
resolvConf: $STATE/resolv.conf
podLogsDir: $STATE/pod-logs
# mounted ConfigMaps (the instance managers' shape) refresh within seconds, not a minute
syncFrequency: 10s
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
  start kubelet "$K8S/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" --hostname-override "$NODE" --node-ip "$NODE_IP"
  cat >"$STATE/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: $NODE
clusterCIDR: $POD_CIDR
clientConnection: {kubeconfig: "$STATE/kubeconfig"}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [$NODE_IP/32]
conntrack: {maxPerCore: 0}
YAML
  start kube-proxy "$K8S/kube-proxy" --config "$STATE/kube-proxy.yaml"
  wait_for kubelet 120 kctl wait node/$NODE --for=condition=Ready --timeout=1s
}

volumes() {
  local i
  for ((i = 0; i < PVS; i++)); do
    mkdir -p "$STATE/pv/pv$i"
    chown 999:999 "$STATE/pv/pv$i"
    chmod 0700 "$STATE/pv/pv$i"
    cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: local-pv$i, labels: {tally.dev/local-cluster: "true"}}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "$STATE/pv/pv$i", type: Directory}
YAML
  done | kctl apply -f - >/dev/null
}

kctl() { "$K8S/kubectl" --kubeconfig "$STATE/kubeconfig" "$@"; }

up() {
  [[ $(id -u) == 0 ]] || die "needs root (kubelet, containerd, network)"
  binaries
  mkdir -p "$STATE/logs" "$STATE/pids"
  save_host
  pki
  bridge
  control_plane
  node
  volumes
  wait_for kube-controller-manager 60 kctl -n default get serviceaccount default
  log "up: export KUBECONFIG=$STATE/kubeconfig PATH=$K8S:\$PATH"
  echo "$STATE/kubeconfig"
}

# stop <name>: SIGTERM, then SIGKILL what is left of its process group.
stop() {
  local f=$STATE/pids/$1 pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f"
}

down() {
  [[ -d $STATE ]] || return 0
  local name
  for name in kube-proxy kubelet; do stop "$name"; done
  # the containers: their processes live in the kubepods cgroups, their shims name our socket
  local procs
  procs=$(cat /sys/fs/cgroup/pids/kubepods*/cgroup.procs /sys/fs/cgroup/pids/kubepods*/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods*/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods*/*/*/*/cgroup.procs 2>/dev/null || true)
  [[ -z $procs ]] || kill -KILL $procs 2>/dev/null || true
  pkill -KILL -f "containerd-shim-runc-v2 .*$STATE/containerd" 2>/dev/null || true
  for name in coredns containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do stop "$name"; done
  # mounts under the state dir and the pods' network namespaces, innermost first
  awk -v s="$STATE" '$5 ~ "^"s || $5 ~ "^/run/netns/cni-" || $5 ~ "^/run/containerd/" {print $5}' /proc/self/mountinfo |
    sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [[ -f $STATE/saved/netns ]]; then
    comm -13 "$STATE/saved/netns" <(ip netns list 2>/dev/null | awk '{print $1}' | sort) | while read -r ns; do ip netns delete "$ns" || true; done
  fi
  ip link delete "$BRIDGE" 2>/dev/null || true
  # the kubelet links every container's log from here to its pod log under the state dir
  find /var/log/containers -maxdepth 1 -lname "$STATE/*" -delete 2>/dev/null || true
  [[ ! -f $STATE/saved/new-dirs ]] || xargs -r rmdir --ignore-fail-on-non-empty <"$STATE/saved/new-dirs" 2>/dev/null || true
  # cgroups kubelet made, deepest first
  find /sys/fs/cgroup/*/kubepods* -depth -type d -exec rmdir {} \; 2>/dev/null || true
  if [[ -f $STATE/saved/sysctl ]]; then
    local t
    for t in filter nat mangle raw; do
      iptables -t "$t" -F 2>/dev/null || true
      iptables -t "$t" -X 2>/dev/null || true
      ip6tables -t "$t" -F 2>/dev/null || true
      ip6tables -t "$t" -X 2>/dev/null || true
    done
    iptables-restore <"$STATE/saved/iptables"
    ip6tables-restore <"$STATE/saved/ip6tables"
    while IFS= read -r kv; do sysctl -qw "$kv" || log "could not restore $kv"; done <"$STATE/saved/sysctl"
  fi
  rm -rf "$STATE"
  log "down: the cluster is gone and the host is as up found it"
}

TALLY_IMAGE=${TALLY_IMAGE:-tally:e2e}
POSTGRES_IMAGE=${POSTGRES_IMAGE:-tally-postgres:15}
case ${1:-} in
up) up ;;
down) down ;;
*) die "usage: $0 up|down" ;;
esac

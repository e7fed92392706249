#!/usr/bin/env bash
# make e2e-local: the e2e scenarios (hack/e2e.sh) on a single-node Kubernetes that this
# script brings up on this machine (hack/local-cluster.sh) and takes down again, also when
# a scenario fails or the run is interrupted. KEEP=1 leaves the cluster running and says
# how to reach it. Needs root; everything it builds is cached under $HOME/.cache/tally.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export STATE=${STATE:-/tmp/tally-local-cluster}
export TALLY_IMAGE=${TALLY_IMAGE:-tally:e2e}
export POSTGRES_IMAGE=${POSTGRES_IMAGE:-tally-postgres:15}
cluster=$root/hack/local-cluster.sh
log() { echo "hack/e2e-local.sh: $*" >&2; }

if [[ $(id -u) != 0 ]]; then
  # kubelet, containerd and the cluster's network need root
  command -v sudo >/dev/null || { log "needs root, and sudo is not installed"; exit 1; }
  exec sudo env PATH="$PATH" HOME="$HOME" KEEP="${KEEP:-}" KUSTOMIZE="${KUSTOMIZE:-kustomize}" "$0" "$@"
fi
k8s=$("$root/hack/envtest-binaries.sh")
if [[ -d $STATE ]]; then
  log "a cluster from an earlier run is at $STATE: taking it down first"
  "$cluster" down
fi

started=$(date +%s)
finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ ${KEEP:-} == 1 ]]; then
    log "the cluster is still running (KEEP=1). To use it:"
    log "  export KUBECONFIG=$STATE/kubeconfig PATH=$k8s:\$PATH"
    log "  kubectl get ledgerclusters,ledgershards,pods -A"
    log "take it down with: hack/local-cluster.sh down"
  else
    "$cluster" down || rc=1
  fi
  log "finished in $(($(date +%s) - started)) s with exit status $rc"
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

kubeconfig=$("$cluster" up)
log "cluster up in $(($(date +%s) - started)) s"
# The node is this machine: the scenarios may reach pods' network namespaces, and a
# second tag of the PostgreSQL image stands in for a new release in the rolling update.
ctr --address "$STATE/containerd/containerd.sock" -n k8s.io images tag --force \
  "docker.io/library/$POSTGRES_IMAGE" "docker.io/library/$POSTGRES_IMAGE-next" >/dev/null
KUBECONFIG=$kubeconfig PATH=$k8s:$PATH IMAGE=$TALLY_IMAGE \
  E2E_POSTGRES_IMAGE=$POSTGRES_IMAGE E2E_POSTGRES_IMAGE_NEXT=$POSTGRES_IMAGE-next E2E_REDIS_IMAGE=$POSTGRES_IMAGE \
  E2E_NODE_ACCESS=1 E2E_KEEP=${KEEP:-} \
  TALLY_BIN=${TALLY_CACHE:-$HOME/.cache/tally}/images/tally \
  KUSTOMIZE=${KUSTOMIZE:-kustomize} "$root/hack/e2e.sh"

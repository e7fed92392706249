#!/usr/bin/env bash
# End-to-end scenarios against the real cluster KUBECONFIG names (kind works): install the
# operator from config/default, create a LedgerCluster, move money through the ledger
# service, scale shards up, and check that a scale-down of shards holding accounts is
# refused. Needs kubectl, curl, and IMAGE loaded into the cluster.
set -euo pipefail

IMAGE=${IMAGE:?set IMAGE to a tally image the cluster can pull}
KUSTOMIZE=${KUSTOMIZE:-kustomize}
NS=${E2E_NAMESPACE:-tally-e2e}
TIMEOUT=${E2E_TIMEOUT:-600s}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pf_pid=""
cleanup() {
  [[ -n $pf_pid ]] && kill "$pf_pid" 2>/dev/null || true
  rm -rf "$work"
  if [[ ${E2E_KEEP:-} != 1 ]]; then
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

step "install the operator ($IMAGE)"
cp -r "$root/config" "$work/config"
(cd "$work/config/manager" && "$KUSTOMIZE" edit set image "tally=$IMAGE")
sed -i "s|value: tally:latest|value: $IMAGE|" "$work/config/manager/manager.yaml"
"$KUSTOMIZE" build "$work/config/default" | kubectl apply --server-side -f -
kubectl -n tally-system rollout status deployment/tally-operator --timeout="$TIMEOUT"

step "create LedgerCluster e2e with one shard"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS" apply -f - <<YAML
apiVersion: ledger.tally.dev/v1alpha1
kind: LedgerCluster
metadata:
  name: e2e
spec:
  shards: 1
  postgres:
    instances: 3
    synchronous: {method: any, number: 1, dataDurability: required}
    storage: {size: 1Gi}
  ledger:
    replicas: 2
YAML
kubectl -n "$NS" wait ledgercluster/e2e --for=condition=Ready --timeout="$TIMEOUT"
kubectl -n "$NS" get ledgercluster,ledgershard,pods,pvc,svc,pdb,jobs

step "children are owned and labelled"
for kind in pods pvc services secrets pdb jobs; do
  owners=$(kubectl -n "$NS" get "$kind" -l ledger.tally.dev/cluster=e2e -o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].kind}{"\n"}{end}' | sort -u)
  [[ -n $owners && $owners != *"<no value>"* ]] || { echo "$kind without owner references"; exit 1; }
done
[[ $(kubectl -n "$NS" get pods -l ledger.tally.dev/shard=e2e-0,ledger.tally.dev/role=primary -o name | wc -l) == 1 ]]

step "move money through the ledger service"
kubectl -n "$NS" port-forward service/e2e-ledger 18080:8080 >/dev/null 2>&1 &
pf_pid=$!
for _ in $(seq 50); do curl -sf localhost:18080/v1/assets >/dev/null && break; sleep 0.2; done
(cd "$root" && go run . dev --print-script 127.0.0.1:18080) >"$work/script.sh"
bash -euo pipefail "$work/script.sh" | tee "$work/out"
grep -q '"balance":"12.34"' "$work/out"

step "scale to two shards with kubectl scale"
kubectl -n "$NS" scale ledgercluster/e2e --replicas=2
kubectl -n "$NS" wait ledgershard/e2e-1 --for=condition=Ready --timeout="$TIMEOUT"
kubectl -n "$NS" wait ledgercluster/e2e --for=condition=Ready --timeout="$TIMEOUT"
for i in $(seq 20); do
  curl -sf -X POST localhost:18080/v1/accounts -H 'Content-Type: application/json' -d "{\"owner\":\"owner-$i\",\"asset\":\"USD\"}" >/dev/null
done

step "a scale-down of a shard holding accounts is refused"
kubectl -n "$NS" scale ledgercluster/e2e --replicas=1
kubectl -n "$NS" wait ledgercluster/e2e --for=jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}'=ScaleDownBlocked --timeout=120s
kubectl -n "$NS" get ledgershard/e2e-1 >/dev/null
kubectl -n "$NS" scale ledgercluster/e2e --replicas=2

step "deleting the cluster garbage-collects its children"
kubectl -n "$NS" delete ledgercluster/e2e --wait=true --timeout="$TIMEOUT"
for _ in $(seq 60); do
  left=$(kubectl -n "$NS" get ledgershard,pods,svc,deploy -l ledger.tally.dev/cluster=e2e -o name | wc -l)
  [[ $left == 0 ]] && break
  sleep 2
done
[[ $left == 0 ]] || { echo "children left behind"; exit 1; }
echo "e2e: all scenarios passed"

#!/usr/bin/env bash
# End-to-end scenarios against the real cluster KUBECONFIG names (kind works): install the
# operator from config/default, create a LedgerCluster, move money through the ledger
# service, lose the primary PostgreSQL pod under load and check that no acknowledged
# transfer is lost, scale shards up, check that a scale-down of shards holding accounts
# is refused, and retire an instance by lowering postgres.instances. Needs kubectl,
# curl, and IMAGE loaded into the cluster.
set -euo pipefail

IMAGE=${IMAGE:?set IMAGE to a tally image the cluster can pull}
KUSTOMIZE=${KUSTOMIZE:-kustomize}
NS=${E2E_NAMESPACE:-tally-e2e}
TIMEOUT=${E2E_TIMEOUT:-600s}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pf_pid=""
cleanup() {
  if [[ -n $pf_pid ]]; then kill "$pf_pid" 2>/dev/null || true; fi
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
    batching: {linger: 1ms}
YAML
kubectl -n "$NS" wait ledgercluster/e2e --for=condition=Ready --timeout="$TIMEOUT"
kubectl -n "$NS" get ledgercluster,ledgershard,pods,pvc,svc,pdb,jobs

step "children are owned and labelled"
for kind in pods services pdb jobs; do
  owners=$(kubectl -n "$NS" get "$kind" -l ledger.tally.dev/cluster=e2e -o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].kind}{"\n"}{end}' | sort -u)
  [[ -n $owners && $owners != *"<no value>"* ]] || { echo "$kind without owner references"; exit 1; }
done
# deletionPolicy Retain (the default): volumes and credentials are owned by nothing
owned=$(kubectl -n "$NS" get pvc,secrets -l ledger.tally.dev/shard=e2e-0 -o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].kind}{"\n"}{end}' | sort -u)
[[ -z $owned ]] || { echo "volumes or credentials owned by $owned under Retain"; exit 1; }
[[ $(kubectl -n "$NS" get pods -l ledger.tally.dev/shard=e2e-0,ledger.tally.dev/role=primary -o name | wc -l) == 1 ]]
# spec.ledger.batching reaches the service as flags, and the service starts with them
kubectl -n "$NS" get deployment/e2e-ledger -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q -- '--linger=1ms'

step "move money through the ledger service"
kubectl -n "$NS" port-forward service/e2e-ledger 18080:8080 >/dev/null 2>&1 &
pf_pid=$!
for _ in $(seq 50); do curl -sf localhost:18080/v1/assets >/dev/null && break; sleep 0.2; done
(cd "$root" && go run . dev --print-script 127.0.0.1:18080) >"$work/script.sh"
bash -euo pipefail "$work/script.sh" | tee "$work/out"
grep -q '"balance":"12.34"' "$work/out"

step "lose the primary pod under load: no acknowledged transfer may be lost"
ALICE=$(grep -o 'alice=[^ ]*' "$work/out" | cut -d= -f2)
BOB=$(grep -o 'bob=[^ ]*' "$work/out" | cut -d= -f2)
primary=$(kubectl -n "$NS" get ledgershard e2e-0 -o jsonpath='{.status.currentPrimary}')
: >"$work/acked"
(
  for i in $(seq 600); do
    body=$(curl -s -m 5 -X POST localhost:18080/v1/transfers -H 'Content-Type: application/json' \
      -H "Idempotency-Key: e2e-load-$i" -d '{"from_account":"'"$BOB"'","to_account":"'"$ALICE"'","amount":"0.01","asset":"USD"}' -w '\n%{http_code}') || continue
    [[ $(tail -1 <<<"$body") == 201 ]] && head -1 <<<"$body" | sed -E 's/.*"id":"([^"]+)".*/\1/' >>"$work/acked"
    sleep 0.05
  done
) &
load_pid=$!
sleep 5
kubectl -n "$NS" delete pod "$primary" --grace-period=0 --force
wait "$load_pid"
kubectl -n "$NS" wait ledgershard/e2e-0 --for=condition=Ready --timeout="$TIMEOUT"
echo "primary was $primary, now $(kubectl -n "$NS" get ledgershard e2e-0 -o jsonpath='{.status.currentPrimary}')"
kubectl -n "$NS" get events --field-selector involvedObject.name=e2e-0 -o custom-columns=REASON:.reason,MESSAGE:.note | tail -20
lost=0
while read -r id; do
  [[ -z $id ]] && continue
  curl -sf "localhost:18080/v1/transactions/$id" >/dev/null || { echo "acknowledged transfer $id is gone"; lost=1; }
done <"$work/acked"
[[ $lost == 0 ]] || exit 1
echo "$(wc -l <"$work/acked") acknowledged transfers, all present"
newprimary=$(kubectl -n "$NS" get ledgershard e2e-0 -o jsonpath='{.status.currentPrimary}')
kubectl -n "$NS" exec "$newprimary" -c postgres -- /controller/tally verify --database-url "postgres://postgres@127.0.0.1:5432/tally?sslmode=disable"

if [[ $(kubectl get nodes -o name | wc -l) -ge 2 ]]; then
  step "draining the primary's node switches over first, then the drain completes"
  primary=$(kubectl -n "$NS" get ledgershard e2e-0 -o jsonpath='{.status.currentPrimary}')
  node=$(kubectl -n "$NS" get pod "$primary" -o jsonpath='{.spec.nodeName}')
  kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout="$TIMEOUT"
  moved=$(kubectl -n "$NS" get ledgershard e2e-0 -o jsonpath='{.status.currentPrimary}')
  [[ $moved != "$primary" ]] || { echo "the drain finished with the primary still on $node"; exit 1; }
  kubectl uncordon "$node"
  kubectl -n "$NS" wait ledgershard/e2e-0 --for=condition=Ready --timeout="$TIMEOUT"
else
  step "draining the primary's node: skipped, the cluster has one node"
fi

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

step "lowering postgres.instances retires the instance beyond it, pod and volume"
kubectl -n "$NS" patch ledgercluster/e2e --type merge -p '{"spec":{"postgres":{"instances":2}}}'
# The primary's manager learns the new shape from its ConfigMap (the kubelet refreshes
# it within a minute or two); if the primary is e2e-0-3 it is switched over first.
for _ in $(seq 150); do
  left=$(kubectl -n "$NS" get pods,pvc -l ledger.tally.dev/shard=e2e-0 -o name | grep -c '/e2e-0-3$' || true)
  [[ $left == 0 ]] && break
  sleep 2
done
[[ $left == 0 ]] || { kubectl -n "$NS" get ledgershard e2e-0 -o yaml; echo "instance e2e-0-3 was not retired"; exit 1; }
kubectl -n "$NS" get events --field-selector involvedObject.name=e2e-0 -o custom-columns=REASON:.reason,MESSAGE:.note | grep -E 'Retire' || true
kubectl -n "$NS" wait ledgershard/e2e-0 --for=condition=Ready --timeout="$TIMEOUT"
curl -sf -m 30 -X POST localhost:18080/v1/accounts -H 'Content-Type: application/json' -d '{"owner":"after-retire","asset":"USD"}' >/dev/null

step "deleting the cluster garbage-collects its children"
kubectl -n "$NS" delete ledgercluster/e2e --wait=true --timeout="$TIMEOUT"
for _ in $(seq 60); do
  left=$(kubectl -n "$NS" get ledgershard,pods,svc,deploy -l ledger.tally.dev/cluster=e2e -o name | wc -l)
  [[ $left == 0 ]] && break
  sleep 2
done
[[ $left == 0 ]] || { echo "children left behind"; exit 1; }
step "the retained volumes and credentials stay, until deleted by label"
[[ $(kubectl -n "$NS" get pvc -l ledger.tally.dev/cluster=e2e -o name | wc -l) -gt 0 ]] || { echo "retained volumes are gone"; exit 1; }
kubectl -n "$NS" delete pvc,secrets -l ledger.tally.dev/cluster=e2e --wait=false
echo "e2e: all scenarios passed"

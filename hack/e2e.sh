#!/usr/bin/env bash
# End-to-end scenarios against the real cluster KUBECONFIG names: install the operator from
# config/default, create a LedgerCluster, move money through the ledger service, and then,
# under continuous load from several clients and checking after each that every
# acknowledged transfer is present:
#   - fail over from a primary cut off the network (needs E2E_NODE_ACCESS=1: this machine
#     is the node and may enter the pods' network namespaces; hack/e2e-local.sh sets it);
#   - fail over from a hung primary (every process of its pod stopped with SIGSTOP);
#   - switch over through the LedgerShard's spec.primary;
#   - roll the PostgreSQL image (E2E_POSTGRES_IMAGE_NEXT);
#   - drain the primary's node (clusters with two nodes or more);
#   - scale to two shards under load and move money on both and between them; refuse a scale-down of a shard holding
#     accounts; retire an instance by lowering postgres.instances; delete the cluster.
# Each wait says what it waits for; a failure prints the cluster's state, events and logs.
# Needs kubectl, curl, kustomize, IMAGE loaded into the cluster, and go (or TALLY_BIN).
set -eEuo pipefail
# (no `| grep -q` under pipefail: grep leaves early, the writer dies of SIGPIPE, and a
# match reads as a failure)

IMAGE=${IMAGE:?set IMAGE to a tally image the cluster can pull}
KUSTOMIZE=${KUSTOMIZE:-kustomize}
NS=${E2E_NAMESPACE:-tally-e2e}
TIMEOUT=${E2E_TIMEOUT:-600s}
PG_IMAGE=${E2E_POSTGRES_IMAGE:-}
PG_IMAGE_NEXT=${E2E_POSTGRES_IMAGE_NEXT:-}
REDIS_IMAGE=${E2E_REDIS_IMAGE:-}
# how soon writes must resume after the primary hangs (the issue's bound is 15 s; the
# default leaves room for a machine busier than the one that measured it)
RESUME_WITHIN=${E2E_RESUME_WITHIN:-30}
CLIENTS=${E2E_CLIENTS:-4}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
pf_pid=""
load_pids=()
started=$(date +%s)
# everything printed is kept too, so a failure can repeat its cause at the very end
exec > >(tee -a "$work/out") 2>&1

current_step=""
step() { current_step=$*; printf '\n== [%4ds] %s\n' "$(($(date +%s) - started))" "$*"; }
say() { echo "   $*"; }
ms() { date +%s%3N; }

# diagnose: what a failed step needs to be understood.
# It writes to stderr: a failure inside $(...) would otherwise end up in a variable.
diagnose() {
  local rc=$? line=$1 cmd=$BASH_COMMAND
  trap - ERR
  exec >&2
  echo
  echo "!! e2e failed at hack/e2e.sh:$line (exit $rc): $cmd"
  echo "-- cluster state"
  kubectl -n "$NS" get ledgercluster,ledgershard,pods,pvc -o wide 2>&1 || true
  kubectl -n "$NS" get ledgershard -o jsonpath='{range .items[*]}{.metadata.name}: {.status}{"\n"}{end}' 2>&1 || true
  echo "-- events"
  events 40 || true
  echo "-- operator log"
  kubectl -n tally-system logs -l app.kubernetes.io/component=operator --tail=60 --prefix 2>&1 || true
  echo "-- ledger log"
  kubectl -n "$NS" logs -l app.kubernetes.io/component=ledger --tail=30 --prefix 2>&1 || true
  echo "== what failed (repeated last: CI keeps only the tail of the output)"
  grep -a '^ *!!' "$work/out" | tail -5 || true
  echo "!! in step: $current_step"
  exit "$rc"
}
trap 'diagnose $LINENO' ERR

cleanup() {
  load_stop 2>/dev/null || true
  if [[ -n $pf_pid ]]; then
    pkill -P "$pf_pid" 2>/dev/null || true
    kill "$pf_pid" 2>/dev/null || true
  fi
  mend_all 2>/dev/null || true
  rm -rf "$work"
  if [[ ${E2E_KEEP:-} != 1 ]]; then
    kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# events [n]: the namespace's last n events, oldest first, with their messages.
events() {
  kubectl -n "$NS" get events --sort-by=.metadata.creationTimestamp \
    -o custom-columns=TIME:.metadata.creationTimestamp,OBJECT:.involvedObject.name,REASON:.reason,MESSAGE:.message |
    tail -"${1:-20}"
}

# until_true <what> <seconds> <command...>: retries the command until it succeeds; fails
# loudly with what it waited for.
until_true() {
  local what=$1 secs=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      echo "!! waited ${secs}s for $what"
      return 1
    fi
    sleep 1
  done
}

shard_field() { kubectl -n "$NS" get ledgershard "$1" -o jsonpath="$2"; }
primary_of() { shard_field "$1" '{.status.currentPrimary}'; }
shard_ready() { kubectl -n "$NS" wait "ledgershard/$1" --for=condition=Ready --timeout=1s; }
# cluster_ready: Ready, as of the cluster's current generation (a condition set before the
# last change is stale)
cluster_ready() {
  local got
  got=$(kubectl -n "$NS" get ledgercluster e2e -o jsonpath='{.metadata.generation} {.status.conditions[?(@.type=="Ready")].observedGeneration} {.status.conditions[?(@.type=="Ready")].status}')
  read -r gen seen ready <<<"$got"
  [[ $ready == True && $seen == "$gen" ]]
}
# ledger_settled: the ledger Deployment has rolled out and its replaced pods are gone, so
# every request reaches a pod that knows the current shards
ledger_settled() {
  kubectl -n "$NS" rollout status deployment/e2e-ledger --timeout=1s >/dev/null || return 1
  local want pods
  want=$(kubectl -n "$NS" get deployment e2e-ledger -o jsonpath='{.spec.replicas}')
  pods=$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=ledger -o name | wc -l)
  [[ $pods == "$want" ]]
}
primary_is_not() { local p; p=$(primary_of "$1"); [[ -n $p && $p != "$2" ]]; }
primary_is() { [[ $(primary_of "$1") == "$2" ]]; }
# streaming_replica <shard> <instance>: the instance runs as a replica that streams
streaming_replica() {
  [[ $(shard_field "$1" "{.status.instances[?(@.name==\"$2\")].role}") == replica &&
    $(shard_field "$1" "{.status.instances[?(@.name==\"$2\")].streaming}") == true ]]
}
# event_seen <object> <reason> <message part>
event_seen() {
  kubectl -n "$NS" get events --field-selector "involvedObject.name=$1,reason=$2" \
    -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep -F -- "$3" >/dev/null
}

# api <method> <path> [body] [idempotency key]: one call to the ledger service; prints
# the body, fails on anything but 2xx.
# api <method> <path> [body] [idempotency key], as the caller whose bearer token is in
# $TOKEN (none while the API is open)
api() {
  curl -sSf -m 30 -X "$1" "http://$LEDGER$2" -H 'Content-Type: application/json' \
    ${TOKEN:+-H "Authorization: Bearer $TOKEN"} ${4:+-H "Idempotency-Key: $4"} ${3:+-d "$3"}
}
id_of() { sed -E 's/.*"id":"([^"]+)".*/\1/'; }
# shard_of <account id>: the shard index carried in bytes 9 and 10 of the id
shard_of() { local id=$1; echo $((16#${id:21:2} * 256 + 16#${id:24:2})); }
balance_of() { api GET "/v1/accounts/$1/balance" | sed -E 's/.*"balance":"([^"]+)".*/\1/'; }
# pay <from> <to> <amount> <idempotency key>
pay() {
  api POST /v1/transfers "{\"from_account\":\"$1\",\"to_account\":\"$2\",\"amount\":\"$3\",\"asset\":\"USD\"}" "$4" >/dev/null
}
# open_funded <owner> <amount>: an account credited with amount from the external account
open_funded() {
  local id
  id=$(api POST /v1/accounts "{\"owner\":\"$1\",\"asset\":\"USD\"}" | id_of)
  pay external "$id" "$2" "fund-$id"
  echo "$id"
}

# load_start <name> <from> <to>: CLIENTS clients post 0.01 transfers from -> to in a loop,
# each logging "start_ms end_ms http_status transaction_id" per request.
load_start() {
  local name=$1 from=$2 to=$3 c
  rm -f "$work/stop"
  for ((c = 0; c < CLIENTS; c++)); do
    (
      trap - ERR
      set +e
      i=0
      while [[ ! -e $work/stop ]]; do
        i=$((i + 1))
        t0=$(ms)
        out=$(curl -s -m 10 -X POST "http://$LEDGER/v1/transfers" -H 'Content-Type: application/json' \
          -H "Idempotency-Key: $name-$c-$i" -w '\n%{http_code}' \
          -d "{\"from_account\":\"$from\",\"to_account\":\"$to\",\"amount\":\"0.01\",\"asset\":\"USD\"}")
        code=${out##*$'\n'}
        id=-
        [[ $code == 201 ]] && id=$(head -1 <<<"$out" | id_of)
        echo "$t0 $(ms) ${code:-000} $id" >>"$work/load-$name-$c"
        [[ $code == 201 ]] || sleep 0.1
      done
    ) &
    load_pids+=($!)
  done
}
load_stop() {
  touch "$work/stop"
  ((${#load_pids[@]} == 0)) || wait "${load_pids[@]}" 2>/dev/null || true
  load_pids=()
}
# acked <name>: the transaction ids acknowledged to the load named name
acked() { cat "$work"/load-"$1"-* | awk '$3 == 201 {print $4}'; }
# first_ack_after <name> <sent> <from>: milliseconds from <from> to the first
# acknowledgement of a request sent after <sent> (both in ms since the epoch)
first_ack_after() {
  cat "$work"/load-"$1"-* | awk -v s="$2" -v t="$3" '$3 == 201 && $1 >= s && (m == "" || $2 < m) {m = $2} END {if (m == "") exit 1; print m - t}'
}
# check_acked <name> [strict]: every acknowledged transfer is in the ledger; prints a
# summary. With strict, no request of the load may have failed either.
check_acked() {
  local n failed
  n=$(acked "$1" | wc -l)
  ((n > 0)) || { echo "!! the load $1 had no acknowledged transfer"; return 1; }
  failed=$(cat "$work"/load-"$1"-* | awk '$3 != 201' | wc -l)
  acked "$1" | xargs -P 4 -I{} sh -c 'curl -sf -m 30 "http://$0/v1/transactions/{}" >/dev/null || echo "!! acknowledged transfer {} is gone"' "$LEDGER" >"$work/gone"
  if [[ -s $work/gone ]]; then
    cat "$work/gone"
    return 1
  fi
  say "$n acknowledged transfers of load $1, all present ($failed requests failed or timed out, none acknowledged)"
  if [[ ${2:-} == strict ]] && ((failed > 0)); then
    echo "!! $failed requests of load $1 failed"
    return 1
  fi
}
# verify <shard>: tally verify on the shard's primary
verify() {
  local p
  p=$(primary_of "$1")
  kubectl -n "$NS" exec "$p" -c postgres -- /controller/tally verify \
    --database-url "postgres://postgres@127.0.0.1:5432/tally?sslmode=disable"
}

# failed_over <load> <old primary> <loss ms> <loss done ms>: a replica of e2e-0 replaces
# the lost primary, writes resume (sets resumed, in ms from the loss), the load stops, the
# promotion is an event, and every acknowledged transfer is present.
failed_over() {
  local load=$1 old=$2 t0=$3 t1=$4 new
  until_true "a replica of e2e-0 to be promoted in place of $old" 180 primary_is_not e2e-0 "$old"
  new=$(primary_of e2e-0)
  say "$new promoted $(($(ms) - t0)) ms after the loss of $old"
  until_true "a transfer acknowledged after the loss" 120 first_ack_after "$load" "$t1" "$t0"
  resumed=$(first_ack_after "$load" "$t1" "$t0")
  say "first acknowledged write $resumed ms after the loss"
  sleep 3
  load_stop
  until_true "the Promoted event of $new on LedgerShard e2e-0" 30 event_seen e2e-0 Promoted "$new is the primary"
  events 12
  check_acked "$load"
}
# rejoined <old primary>: it streams from the new one, the shard is Ready, verify is clean
rejoined() {
  until_true "$1 to rejoin e2e-0 as a streaming replica" 300 streaming_replica e2e-0 "$1"
  until_true "LedgerShard e2e-0 to be Ready" 300 shard_ready e2e-0
  verify e2e-0
}

# pod_netns <pod>: the network namespace on this node that holds the pod's IP.
pod_netns() {
  local ip ns
  ip=$(kubectl -n "$NS" get pod "$1" -o jsonpath='{.status.podIP}')
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    if ip netns exec "$ns" ip -o -4 addr show 2>/dev/null | grep " inet $ip/" >/dev/null; then
      echo "$ns"
      return
    fi
  done
  return 1
}
cut_ns=()
cut_off() {
  ip netns exec "$1" iptables -I INPUT 1 -i eth0 -j DROP
  ip netns exec "$1" iptables -I OUTPUT 1 -o eth0 -j DROP
  cut_ns+=("$1")
}
mend() {
  ip netns exec "$1" iptables -D INPUT -i eth0 -j DROP 2>/dev/null || true
  ip netns exec "$1" iptables -D OUTPUT -o eth0 -j DROP 2>/dev/null || true
}
mend_all() { local ns; for ns in "${cut_ns[@]}"; do mend "$ns"; done; }

step "install the operator ($IMAGE)"
cp -r "$root/config" "$work/config"
(cd "$work/config/manager" && "$KUSTOMIZE" edit set image "tally=$IMAGE")
"$KUSTOMIZE" build "$work/config/default" | kubectl apply --server-side -f - >/dev/null
kubectl -n tally-system rollout status deployment/tally-operator --timeout="$TIMEOUT"

step "create LedgerCluster e2e with one shard of three instances, in a namespace that enforces the restricted Pod Security Standard"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NS" apply -f - <<YAML
apiVersion: ledger.tally.dev/v1alpha1
kind: LedgerCluster
metadata:
  name: e2e
spec:
  shards: 1
  postgres:
    instances: 3
    ${PG_IMAGE:+image: $PG_IMAGE}
    synchronous: {method: any, number: 1, dataDurability: required}
    storage: {size: 1Gi}
  ledger:
    replicas: 2
    batching: {linger: 1ms}
YAML
until_true "LedgerCluster e2e to be Ready" 600 cluster_ready
say "ready $(($(date +%s) - started)) s after the start"
kubectl -n "$NS" get ledgercluster,ledgershard,pods,pvc,svc,pdb,jobs

step "children are owned and labelled"
for kind in pods services pdb jobs; do
  owners=$(kubectl -n "$NS" get "$kind" -l ledger.tally.dev/cluster=e2e -o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].kind}{"\n"}{end}' | sort -u)
  [[ -n $owners && $owners != *"<no value>"* ]] || { echo "!! $kind without owner references"; false; }
done
# deletionPolicy Retain (the default): volumes and credentials are owned by nothing
# (the server certificate is not data: owned by its shard, issued again when missing)
owned=$( (kubectl -n "$NS" get pvc -l ledger.tally.dev/shard=e2e-0 -o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].kind}{"\n"}{end}'
  kubectl -n "$NS" get secrets -l ledger.tally.dev/shard=e2e-0 --field-selector type!=kubernetes.io/tls -o jsonpath='{range .items[*]}{.metadata.ownerReferences[0].kind}{"\n"}{end}') | sort -u)
[[ -z $owned ]] || { echo "!! volumes or credentials owned by $owned under Retain"; false; }
[[ $(kubectl -n "$NS" get pods -l ledger.tally.dev/shard=e2e-0,ledger.tally.dev/role=primary -o name | wc -l) == 1 ]]
# spec.ledger.batching reaches the service as flags, and the service starts with them
kubectl -n "$NS" get deployment/e2e-ledger -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -- '--linger=1ms' >/dev/null

step "reach the ledger service"
# Its ClusterIP when this machine routes to Services (it is the node), else a port-forward
# started again whenever it ends: the ledger Deployment rolls on every shard change.
ip=$(kubectl -n "$NS" get service e2e-ledger -o jsonpath='{.spec.clusterIP}')
if [[ ${E2E_LEDGER_VIA:-} != port-forward ]] && curl -sf -m 3 "http://$ip:8080/v1/assets" >/dev/null 2>&1; then
  LEDGER=$ip:8080
  say "through its ClusterIP $LEDGER"
else
  LEDGER=127.0.0.1:18080
  (
    trap - ERR
    while :; do
      kubectl -n "$NS" port-forward service/e2e-ledger 18080:8080 >>"$work/port-forward.log" 2>&1 || true
      sleep 0.5
    done
  ) &
  pf_pid=$!
  until_true "the port-forward to the ledger service" 60 curl -sf -m 2 "http://$LEDGER/v1/assets"
  say "through a port-forward to $LEDGER"
fi

step "move money through the ledger service"
if [[ -n ${TALLY_BIN:-} ]]; then
  "$TALLY_BIN" dev --print-script "$LEDGER" >"$work/script.sh"
else
  (cd "$root" && go run . dev --print-script "$LEDGER") >"$work/script.sh"
fi
bash -euo pipefail "$work/script.sh" | tee "$work/out"
grep -q '"balance":"12.34"' "$work/out"

step "encryption in transit: every connection into PostgreSQL from outside its pod is TLS, and the ledger verifies it"
p=$(primary_of e2e-0)
remote=$(kubectl -n "$NS" exec "$p" -c postgres -- psql -h 127.0.0.1 -U postgres -d tally -Atc \
  "SELECT count(*) || ' ' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
    WHERE a.client_addr IS NOT NULL AND a.client_addr <> '127.0.0.1'")
read -r all encrypted <<<"$remote"
say "$all connections from outside $p (the ledger's, the replicas'), $encrypted over TLS"
(( all > 0 && all == encrypted )) || { echo "!! connections in the clear: $remote"; false; }
kubectl -n "$NS" get deployment e2e-ledger -o jsonpath='{.spec.template.spec.containers[0].env}' | grep -q 'sslmode=verify-full' ||
  { echo "!! the ledger does not verify the shard's certificate"; false; }

SRC=$(open_funded load-source 1000000.00)
DST=$(api POST /v1/accounts '{"owner":"load-sink","asset":"USD"}' | id_of)
say "load moves 0.01 at a time from $SRC to $DST with $CLIENTS clients"

if [[ ${E2E_NODE_ACCESS:-} == 1 ]]; then
  step "failover: the primary is cut off the network under load"
  load_start cut "$SRC" "$DST"
  sleep 5
  old=$(primary_of e2e-0)
  ns=$(pod_netns "$old")
  t0=$(ms)
  cut_off "$ns"
  t1=$(ms)
  say "cut $old off (network namespace $ns)"
  failed_over cut "$old" "$t0" "$t1"
  mend "$ns"
  say "$old is on the network again"
  rejoined "$old"
else
  step "failover from a primary cut off the network: skipped (needs E2E_NODE_ACCESS=1 on the node)"
fi

step "failover: every process of the primary's pod is stopped (SIGSTOP), connections left open"
load_start hung "$SRC" "$DST"
sleep 5
old=$(primary_of e2e-0)
t0=$(ms)
kubectl -n "$NS" exec "$old" -c postgres -- bash -c 'kill -STOP -1'
t1=$(ms)
say "froze every process of $old ($((t1 - t0)) ms to run kubectl exec)"
failed_over hung "$old" "$t0" "$t1"
kubectl -n "$NS" exec "$old" -c postgres -- bash -c 'kill -CONT -1' || true
say "thawed $old"
((resumed <= RESUME_WITHIN * 1000)) || { echo "!! writes resumed ${resumed} ms after the freeze, more than ${RESUME_WITHIN} s"; false; }
rejoined "$old"

step "switchover through the LedgerShard's spec.primary, under load"
load_start switch "$SRC" "$DST"
sleep 3
old=$(primary_of e2e-0)
target=$(shard_field e2e-0 '{.status.instances[?(@.role=="replica")].name}' | awk '{print $1}')
kubectl -n "$NS" patch ledgershard/e2e-0 --type merge -p "{\"spec\":{\"primary\":\"$target\"}}"
until_true "$target to be the primary of e2e-0" 120 primary_is e2e-0 "$target"
sleep 3
load_stop
event_seen e2e-0 SwitchoverStarted "$target"
check_acked switch
until_true "$old to stream from $target" 180 streaming_replica e2e-0 "$old"
kubectl -n "$NS" patch ledgershard/e2e-0 --type json -p '[{"op":"remove","path":"/spec/primary"}]'
until_true "LedgerShard e2e-0 to be Ready" 300 shard_ready e2e-0

if [[ -n $PG_IMAGE_NEXT ]]; then
  step "rolling update of the PostgreSQL image to $PG_IMAGE_NEXT, under load"
  load_start roll "$SRC" "$DST"
  kubectl -n "$NS" patch ledgercluster/e2e --type merge -p "{\"spec\":{\"postgres\":{\"image\":\"$PG_IMAGE_NEXT\"}}}"
  rolled() {
    local images
    images=$(kubectl -n "$NS" get pods -l ledger.tally.dev/shard=e2e-0,app.kubernetes.io/component=postgres \
      -o jsonpath='{range .items[*]}{.spec.containers[?(@.name=="postgres")].image}{"\n"}{end}' | sort -u)
    [[ $images == "$PG_IMAGE_NEXT" ]] && shard_ready e2e-0
  }
  until_true "every instance of e2e-0 to run $PG_IMAGE_NEXT" 600 rolled
  sleep 3
  load_stop
  event_seen e2e-0 RolloutSwitchover "switching over"
  check_acked roll
  verify e2e-0
else
  step "rolling update of the PostgreSQL image: skipped (set E2E_POSTGRES_IMAGE_NEXT)"
fi

if [[ $(kubectl get nodes -o name | wc -l) -ge 2 ]]; then
  step "draining the primary's node switches over first, then the drain completes"
  primary=$(primary_of e2e-0)
  node=$(kubectl -n "$NS" get pod "$primary" -o jsonpath='{.spec.nodeName}')
  kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout="$TIMEOUT"
  moved=$(primary_of e2e-0)
  [[ $moved != "$primary" ]] || { echo "!! the drain finished with the primary still on $node"; false; }
  kubectl uncordon "$node"
  until_true "LedgerShard e2e-0 to be Ready" 300 shard_ready e2e-0
else
  step "draining the primary's node: skipped, the cluster has one node"
fi

step "scale to two shards with kubectl scale, under load; money moves on both and between them"
before=$(primary_of e2e-0)
load_start scale "$SRC" "$DST"
kubectl -n "$NS" scale ledgercluster/e2e --replicas=2
until_true "LedgerShard e2e-1 to be Ready" 600 shard_ready e2e-1
until_true "LedgerCluster e2e to be Ready with two shards" 300 cluster_ready
until_true "the ledger service to serve both shards, and no replaced pod to serve" 300 ledger_settled
load_stop
if [[ $(primary_of e2e-0) == "$before" ]]; then
  check_acked scale strict # the new shard joins without failing a request
else
  # A machine too busy to answer the operator's health checks in time (three new
  # PostgreSQL pods start beside the load) may fail shard 0 over; then requests may fail
  # while it does, but none acknowledged may be lost.
  say "warning: e2e-0 failed over during the scale-up ($before -> $(primary_of e2e-0)); its events:"
  events 15 | grep e2e-0 || true
  check_acked scale
fi
# an owner's accounts live on one shard: open pairs until both shards hold one
declare -A pair=()
for i in $(seq 40); do
  a=$(api POST /v1/accounts "{\"owner\":\"scaled-$i\",\"asset\":\"USD\"}" | id_of)
  s=$(shard_of "$a")
  [[ -n ${pair[$s]:-} ]] && continue
  b=$(api POST /v1/accounts "{\"owner\":\"scaled-$i\",\"asset\":\"USD\"}" | id_of)
  [[ $(shard_of "$b") == "$s" ]] || { echo "!! two accounts of owner scaled-$i on different shards"; false; }
  pair[$s]="$a $b"
  [[ -n ${pair[0]:-} && -n ${pair[1]:-} ]] && break
done
[[ -n ${pair[0]:-} && -n ${pair[1]:-} ]] || { echo "!! 40 owners and no account on both shards: ${!pair[*]}"; false; }
for s in 0 1; do
  read -r a b <<<"${pair[$s]}"
  pay external "$a" 50.00 "scaled-fund-$a"
  pay "$a" "$b" 7.50 "scaled-pay-$a"
  [[ $(balance_of "$a") == 42.50 && $(balance_of "$b") == 7.50 ]] || { echo "!! balances on shard $s: $(balance_of "$a") $(balance_of "$b")"; false; }
  say "shard $s: $a paid 7.50 to $b"
done
read -r a0 _ <<<"${pair[0]}"
read -r a1 _ <<<"${pair[1]}"
across=$(api POST /v1/transfers "{\"from_account\":\"$a0\",\"to_account\":\"$a1\",\"amount\":\"2.50\",\"asset\":\"USD\"}" "across-$a0")
grep -q '"state":"posted"' <<<"$across" || { echo "!! a transfer between shards: $across"; false; }
[[ $(balance_of "$a0") == 40.00 && $(balance_of "$a1") == 45.00 ]] || { echo "!! balances after a transfer between shards: $(balance_of "$a0") $(balance_of "$a1")"; false; }
say "$a0 on shard 0 paid 2.50 to $a1 on shard 1"
verify e2e-0
verify e2e-1

step "a scale-down of a shard holding accounts is refused"
kubectl -n "$NS" scale ledgercluster/e2e --replicas=1
kubectl -n "$NS" wait ledgercluster/e2e --for=jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}'=ScaleDownBlocked --timeout=120s
kubectl -n "$NS" get ledgershard/e2e-1 >/dev/null
kubectl -n "$NS" scale ledgercluster/e2e --replicas=2

step "lowering postgres.instances retires the instance beyond it, pod and volume"
kubectl -n "$NS" patch ledgercluster/e2e --type merge -p '{"spec":{"postgres":{"instances":2}}}'
# The primary's manager learns the new shape from its ConfigMap (the kubelet refreshes
# it within a minute or two); if the primary is e2e-0-3 it is switched over first.
retired() {
  local left
  left=$(kubectl -n "$NS" get pods,pvc -l ledger.tally.dev/shard=e2e-0 -o name) || return 1
  [[ $'\n'$left$'\n' != *$'/e2e-0-3\n'* ]]
}
until_true "instance e2e-0-3 to be retired, pod and volume" 300 retired
event_seen e2e-0 InstanceRetired e2e-0-3
until_true "LedgerShard e2e-0 to be Ready" 300 shard_ready e2e-0
api POST /v1/accounts '{"owner":"after-retire","asset":"USD"}' >/dev/null

step "events: the relay publishes every acknowledged transfer of both shards to Kafka (tally events broker)"
kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: e2e-kafka}
spec:
  selector: {matchLabels: {app: e2e-kafka}}
  template:
    metadata: {labels: {app: e2e-kafka}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: kafka
        image: $IMAGE
        command: [/tally, events, broker, --listen=0.0.0.0:9092, --advertise=e2e-kafka.$NS.svc:9092]
        ports: [{containerPort: 9092}]
        readinessProbe: {tcpSocket: {port: 9092}, periodSeconds: 2}
        securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: e2e-kafka}
spec:
  selector: {app: e2e-kafka}
  ports: [{port: 9092, targetPort: 9092}]
EOF
kubectl -n "$NS" rollout status deployment/e2e-kafka --timeout="$TIMEOUT" >/dev/null
kubectl -n "$NS" patch ledgercluster e2e --type merge -p "{\"spec\":{\"events\":{\"kafka\":{\"brokers\":[\"e2e-kafka.$NS.svc:9092\"]}}}}" >/dev/null
until_true "the relay Deployment" 120 kubectl -n "$NS" get deployment e2e-relay
kubectl -n "$NS" rollout status deployment/e2e-relay --timeout="$TIMEOUT" >/dev/null
load_start events "$SRC" "$DST"
sleep 5
load_stop
check_acked events
read -r b0 b1 <<<"${pair[1]}"
shard1_tx=$(api POST /v1/transfers "{\"from_account\":\"$b0\",\"to_account\":\"$b1\",\"amount\":\"1.00\",\"asset\":\"USD\"}" "events-shard1" | id_of)
acked events >"$work/events-want"
echo "$shard1_tx" >>"$work/events-want"
# every acknowledged transfer is a transaction.committed event (read from inside the
# cluster, from a ledger pod: the broker tells clients its Service address)
published() {
  kubectl -n "$NS" exec deploy/e2e-ledger -c ledger -- /tally events tail --brokers "e2e-kafka.$NS.svc:9092" --idle 3s \
    >"$work/events" 2>"$work/events-err" || return 1
  grep '"type":"transaction.committed"' "$work/events" | grep -o '"data":{"id": *"[^"]*"' | cut -d'"' -f6 | sort -u >"$work/events-got"
  [[ -z $(sort -u "$work/events-want" | comm -23 - "$work/events-got") ]]
}
until_true "every acknowledged transfer to be an event in Kafka" 120 published
say "$(wc -l <"$work/events-want") acknowledged transfers (both shards) found among $(wc -l <"$work/events") events"
# one relay replica publishes per shard, the other stands by
active=0
for pod in $(kubectl -n "$NS" get pods -l ledger.tally.dev/cluster=e2e,app.kubernetes.io/component=relay -o name); do
  n=$( (kubectl get --raw "/api/v1/namespaces/$NS/pods/${pod#pod/}:9090/proxy/metrics" 2>/dev/null || true) |
    awk '/^tally_events_relay_active/ {s += $2} END {print s + 0}')
  active=$((active + n))
done
[[ $active == 2 ]] || { echo "!! $active relays publish, want one per shard (2)"; false; }
say "one relay publishes per shard, the other stands by"

step "change data capture: logical decoding and the publication on every shard, rolled in under load; the relay follows the switchovers"
load_start cdc "$SRC" "$DST"
kubectl -n "$NS" patch ledgercluster e2e --type merge -p '{"spec":{"events":{"cdc":{"enabled":true}}}}' >/dev/null
# every instance runs with the CDC login's password (so logical decoding), and each
# shard's primary has the publication and the login
cdc_ready() {
  local s p pods
  for s in e2e-0 e2e-1; do
    pods=$(kubectl -n "$NS" get pods -l ledger.tally.dev/shard=$s,app.kubernetes.io/component=postgres \
      -o jsonpath='{range .items[*]}{.metadata.name}={.spec.containers[?(@.name=="postgres")].env[*].name}{"\n"}{end}')
    [[ -n $pods ]] && ! grep -v TALLY_CDC_PASSWORD <<<"$pods" >/dev/null || return 1
    shard_ready "$s" || return 1
    p=$(primary_of "$s")
    [[ $(kubectl -n "$NS" exec "$p" -c postgres -- psql -h 127.0.0.1 -U postgres -d tally -tAc \
      "SELECT current_setting('wal_level') || ' ' || (SELECT count(*) FROM pg_publication WHERE pubname = 'tally_cdc') || ' ' || (SELECT count(*) FROM pg_roles WHERE rolname = 'tally_cdc' AND rolreplication)") == "logical 1 1" ]] || return 1
  done
}
until_true "logical decoding, the publication and the CDC login on every shard" 600 cdc_ready
sleep 3
load_stop
check_acked cdc
acked cdc >>"$work/events-want"
until_true "every transfer acknowledged during the rollout to be an event in Kafka" 120 published
say "wal_level=logical, publication tally_cdc and login tally_cdc on both shards' primaries; $(wc -l <"$work/events-want") acknowledged transfers all events"

step "callers with JWTs: a user moves money between its own accounts only; a service has its token"
(cd "$root" && go build -o "$work/jwt" ./hack/jwt)
mkdir -p "$work/issuer" && "$work/jwt" keys "$work/issuer"
ops_token=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
kubectl -n "$NS" create secret generic e2e-jwks --from-file=jwks.json="$work/issuer/jwks.json" >/dev/null
kubectl -n "$NS" create secret generic e2e-tokens --from-literal=tokens="e2e-ops:$ops_token roles=operator,admin" >/dev/null
kubectl -n "$NS" patch ledgercluster e2e --type merge -p '{"spec":{"auth":{"tokensSecret":{"name":"e2e-tokens","key":"tokens"},
  "jwt":{"issuer":"https://issuer.e2e.test","audience":"tally-e2e","jwksSecret":{"name":"e2e-jwks","key":"jwks.json"}}}}}' >/dev/null
# every ledger pod, old ones included while they drain, refuses an anonymous caller
anonymous_refused() {
  local i
  for i in $(seq 20); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -m 5 "http://$LEDGER/v1/assets") == 401 ]] || return 1
  done
}
kubectl -n "$NS" rollout status deployment/e2e-ledger --timeout="$TIMEOUT" >/dev/null
until_true "every ledger pod to refuse callers without a token" 300 anonymous_refused
alice=$("$work/jwt" token "$work/issuer" https://issuer.e2e.test tally-e2e alice-e2e)
TOKEN=$alice
a1=$(api POST /v1/accounts '{"owner":"alice-e2e","asset":"USD"}' | id_of)
a2=$(api POST /v1/accounts '{"owner":"alice-e2e","asset":"USD"}' | id_of)
TOKEN=$ops_token pay external "$a1" 10.00 jwt-fund
pay "$a1" "$a2" 2.50 jwt-own
[[ $(balance_of "$a2") == 2.50 ]] || { echo "!! alice's transfer between her accounts"; false; }
status=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H "Authorization: Bearer $alice" "http://$LEDGER/v1/accounts/$SRC/balance")
[[ $status == 404 ]] || { echo "!! alice read another owner's balance: $status"; false; }
status=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -X POST -H "Authorization: Bearer $alice" -H 'Idempotency-Key: jwt-steal' \
  -H 'Content-Type: application/json' -d "{\"from_account\":\"$SRC\",\"to_account\":\"$a1\",\"amount\":\"1.00\",\"asset\":\"USD\"}" "http://$LEDGER/v1/transfers")
[[ $status == 404 ]] || { echo "!! alice took money from another owner's account: $status"; false; }
say "alice (a JWT) moved 2.50 between her accounts; another owner's account answered her 404"
unset TOKEN

step "rate limits shared by the ledger's replicas through the managed Redis"
kubectl -n "$NS" patch ledgercluster e2e --type merge -p "{\"spec\":{\"redis\":{\"managed\":true${REDIS_IMAGE:+,\"image\":\"$REDIS_IMAGE\"}},
  \"ledger\":{\"rateLimits\":{\"writes\":\"5/h\"}}}}" >/dev/null
until_true "the managed Redis Deployment" 120 kubectl -n "$NS" get deployment e2e-redis
kubectl -n "$NS" rollout status deployment/e2e-redis --timeout="$TIMEOUT" >/dev/null
kubectl -n "$NS" rollout status deployment/e2e-ledger --timeout="$TIMEOUT" >/dev/null
# every replica answering, draining ones included, limits writes (the probes are the
# operator token's writes: once over its allowance they are refused, still with headers)
limited() {
  local i
  for i in $(seq 10); do
    curl -s -D - -o /dev/null -m 5 -X POST -H "Authorization: Bearer $ops_token" -H 'Content-Type: application/json' \
      -d '{"owner":"probe","asset":"USD"}' "http://$LEDGER/v1/accounts" | grep -qi '^ratelimit-limit: 5' || return 1
  done
}
until_true "every ledger replica to limit writes" 300 limited
# 8 writes of a new caller across the replicas: 5 allowed, 3 refused, when they share
# Redis. (A replica whose Redis call ran past its 100 ms limits alone for 5 s, by
# design: then the try is made again, with another caller.)
shared=""
for try in 1 2 3; do
  carol=$("$work/jwt" token "$work/issuer" https://issuer.e2e.test tally-e2e "carol-$try")
  codes=""
  for i in $(seq 8); do
    codes+=" $(curl -s -o /dev/null -w '%{http_code}' -m 10 -X POST -H "Authorization: Bearer $carol" -H 'Content-Type: application/json' \
      -d "{\"owner\":\"carol-$try\",\"asset\":\"USD\"}" "http://$LEDGER/v1/accounts")"
  done
  say "carol-$try's 8 writes across the ledger replicas:$codes"
  if [[ $(grep -o 201 <<<"$codes" | wc -l) == 5 && $(grep -o 429 <<<"$codes" | wc -l) == 3 ]]; then
    shared=1
    break
  fi
  sleep 6
done
[[ -n $shared ]] || { echo "!! the replicas did not share one allowance of 5 writes"; false; }

step "replays answered from the managed Redis"
# erin's writes fit the 5 an hour: two accounts, a transfer she cannot pay (a recorded
# refusal is an answer like a 201), and two replays of it, to any replica.
erin=$("$work/jwt" token "$work/issuer" https://issuer.e2e.test tally-e2e erin)
erin_account() {
  curl -s -m 10 -X POST -H "Authorization: Bearer $erin" -H 'Content-Type: application/json' \
    -d '{"owner":"erin","asset":"USD"}' "http://$LEDGER/v1/accounts" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}
erin_a=$(erin_account)
erin_b=$(erin_account)
[[ -n $erin_a && -n $erin_b ]] || { echo "!! erin's accounts were not opened"; false; }
erin_pay() {
  curl -s -m 10 -X POST -H "Authorization: Bearer $erin" -H 'Content-Type: application/json' -H 'Idempotency-Key: erin-1' \
    -d "{\"from_account\":\"$erin_a\",\"to_account\":\"$erin_b\",\"amount\":\"1.00\",\"asset\":\"USD\"}" \
    -w ' %{http_code}' "http://$LEDGER/v1/transfers"
}
first=$(erin_pay)
[[ $first == *insufficient_funds*422 ]] || { echo "!! erin's transfer: $first"; false; }
sleep 2 # answers are kept in the background
for i in 1 2; do
  again=$(erin_pay)
  [[ $again == "$first" ]] || { echo "!! replay $i: $again, first: $first"; false; }
done
# What the replicas say they answered from Redis (through the API server's proxy).
hits=0
for pod in $(kubectl -n "$NS" get pods -l ledger.tally.dev/cluster=e2e,app.kubernetes.io/component=ledger -o name); do
  n=$( (kubectl get --raw "/api/v1/namespaces/$NS/pods/${pod#pod/}:9090/proxy/metrics" 2>/dev/null || true) |
    sed -n 's/^tally_idempotency_cache_lookups_total{result="hit"} \([0-9]*\).*/\1/p')
  hits=$((hits + ${n:-0}))
done
[[ $hits -ge 2 ]] || { echo "!! the ledger replicas answered $hits replays from Redis, want 2"; false; }
say "erin's refused transfer replayed twice, byte for byte, both from Redis"

step "retention: each shard's archiver runs against its primary (checkpoints made, nothing yet old enough to archive)"
kubectl -n "$NS" patch ledgercluster e2e --type merge -p '{"spec":{"retention":{"months":12,"storage":{"size":"1Gi"}}}}' >/dev/null
for shard in e2e-0 e2e-1; do
  until_true "the archiver CronJob of $shard" 120 kubectl -n "$NS" get cronjob "$shard-archive"
  kubectl -n "$NS" create job "$shard-archive-now" --from="cronjob/$shard-archive" >/dev/null
done
for shard in e2e-0 e2e-1; do
  if ! kubectl -n "$NS" wait "job/$shard-archive-now" --for=condition=Complete --timeout="$TIMEOUT"; then
    kubectl -n "$NS" logs "job/$shard-archive-now" --tail=40 || true
    echo "!! $shard's archiver did not complete"
    false
  fi
  out=$(kubectl -n "$NS" logs "job/$shard-archive-now")
  [[ $out == *"nothing to archive"* ]] || { echo "!! $shard's archiver said: $out"; false; }
done
say "both shards' archivers ran with their volumes mounted and found nothing older than 12 months"

step "deleting the cluster garbage-collects its children"
kubectl -n "$NS" delete ledgercluster/e2e --wait=true --timeout="$TIMEOUT"
gone() { [[ $(kubectl -n "$NS" get ledgershard,pods,svc,deploy -l ledger.tally.dev/cluster=e2e -o name | wc -l) == 0 ]]; }
until_true "the cluster's children to be deleted" 120 gone
step "the retained volumes and credentials stay, until deleted by label"
[[ $(kubectl -n "$NS" get pvc -l ledger.tally.dev/cluster=e2e -o name | wc -l) -gt 0 ]] || { echo "!! retained volumes are gone"; false; }
kubectl -n "$NS" delete pvc,secrets -l ledger.tally.dev/cluster=e2e --wait=false
step "e2e: all scenarios passed in $(($(date +%s) - started)) s"

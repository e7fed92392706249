# Tally. `make dev` runs the ledger locally; `make test` runs every test.
GO            ?= go
BIN           := bin/tally
CACHE         ?= $(HOME)/.cache/tally
TOOLS         := $(CACHE)/bin
STATICCHECK   := $(TOOLS)/staticcheck
CONTROLLER_GEN := $(TOOLS)/controller-gen
KUSTOMIZE     := $(TOOLS)/kustomize
BUF           := $(TOOLS)/buf
PROTOC_GEN_GO := $(TOOLS)/protoc-gen-go
PROTOC_GEN_GO_GRPC := $(TOOLS)/protoc-gen-go-grpc
STATICCHECK_VERSION    := v0.8.2
CONTROLLER_GEN_VERSION := v0.23.0
KUSTOMIZE_VERSION      := v5.8.2
BUF_VERSION            := v1.75.0
PROTOC_GEN_GO_VERSION  := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.5.1
IMAGE         ?= ghcr.io/tallyhq/tally:dev
BENCH_TIME    ?= 10s
BENCH_ROUNDS  ?= 3
BENCH_CLIENTS ?= 64
BENCH_LARGE   ?= 1000000

.PHONY: all build test lint fmt dev bench bench-scale fuzz deps envtest generate manifests schema proto check-generated check-proto e2e e2e-local image clean

all: build

build:
	$(GO) build -o $(BIN) .

deps:
	hack/ensure-deps.sh

## envtest: build (once) and cache kube-apiserver and etcd for the controller tests.
envtest:
	@hack/envtest-binaries.sh >/dev/null

## test: lint, generated files current, manifests render, then every test with the race
## detector against real PostgreSQL and a real kube-apiserver.
test: deps lint check-generated check-proto envtest
	KUBEBUILDER_ASSETS=$$(hack/envtest-binaries.sh) $(GO) test -race -count=1 ./...

$(STATICCHECK):
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(CONTROLLER_GEN):
	GOBIN=$(TOOLS) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
$(KUSTOMIZE):
	GOBIN=$(TOOLS) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
$(BUF):
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(PROTOC_GEN_GO):
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(PROTOC_GEN_GO_GRPC):
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
PROTO_TOOLS := $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)

lint: $(STATICCHECK)
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

fmt:
	gofmt -w .

## generate: deepcopy functions of the API types.
generate: $(CONTROLLER_GEN)
	$(CONTROLLER_GEN) object paths=./api/...

## manifests: CRDs and RBAC from the kubebuilder markers.
manifests: $(CONTROLLER_GEN)
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=operator paths=./controllers/... output:rbac:artifacts:config=config/rbac
	cp config/crd/bases/*.yaml charts/tally/crds/
	cp config/rbac/role.yaml charts/tally/files/role.yaml
	cp config/prometheus/alerts.yaml charts/tally/files/alerts.yaml

## schema: rewrite ledger/migrations/schema.sql, the live schema as pg_dump prints it after
## every migration (make test fails when it is stale).
schema:
	$(GO) test -count=1 -run TestSchemaDumpIsCurrent ./ledger/migrations -update

## proto: the gRPC API's Go code (ledger/grpcapi/ledgerv1) from proto/, with the pinned
## plugins.
proto: $(PROTO_TOOLS)
	PATH=$(TOOLS):$$PATH $(BUF) generate

## check-proto: buf lint; the generated Go current; no breaking change to the API since
## the previous commit (where there is one).
check-proto: $(PROTO_TOOLS)
	$(BUF) lint
	@before=$$(find ledger/grpcapi/ledgerv1 -type f | sort | xargs sha256sum); \
	$(MAKE) --no-print-directory -s proto >/dev/null; \
	after=$$(find ledger/grpcapi/ledgerv1 -type f | sort | xargs sha256sum); \
	if [ "$$before" != "$$after" ]; then echo "generated gRPC code was stale: run make proto and commit"; exit 1; fi
	@if git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:proto 2>/dev/null; then \
		$(BUF) breaking --against '.git#ref=HEAD~1'; \
	else echo "check-proto: no previous commit with proto/ to check breaking changes against"; fi

GENERATED := api/v1alpha1/zz_generated.deepcopy.go config/crd/bases config/rbac/role.yaml charts/tally/crds charts/tally/files

## check-generated: fail if `make generate manifests` would change a committed file, and
## check that the kustomizations render.
check-generated: $(CONTROLLER_GEN) $(KUSTOMIZE)
	@before=$$(find $(GENERATED) -type f | sort | xargs sha256sum); \
	$(MAKE) --no-print-directory -s generate manifests >/dev/null; \
	after=$$(find $(GENERATED) -type f | sort | xargs sha256sum); \
	if [ "$$before" != "$$after" ]; then echo "generated files were stale: run make generate manifests and commit"; exit 1; fi
	$(KUSTOMIZE) build config/default >/dev/null
	$(KUSTOMIZE) build config/samples >/dev/null
	hack/check-image.sh $(KUSTOMIZE)

## dev: PostgreSQL in .tally/dev and the ledger API on 127.0.0.1:8080.
dev: deps
	@[ -x $(BIN) ] || echo "make dev: building $(BIN) (the first build downloads Go modules and compiles: several minutes on 2 cores; later builds take seconds)"
	@$(MAKE) --no-print-directory build
	$(BIN) dev

## bench: the throughput harness (tally bench: every scenario at 64 clients, 3 rounds, through
## the API from a Go client and from wrk, straight into the store, and one unbatched call per
## transfer, each divided by the reference ceiling run beside it on the same PostgreSQL; the
## service with Redis (idempotency fast path, rate limits) beside it without; WAL and disk
## bytes per transfer; uniform again on 1,000,000 accounts; then the targets), then
## the Go benchmarks, then the time from losing a primary to the first acknowledged write.
bench: deps build
	$(BIN) bench --duration $(BENCH_TIME) --rounds $(BENCH_ROUNDS) --clients $(BENCH_CLIENTS) \
	  --modes http,wrk,store,one-call,http-cache,http-limits,http-no-outbox,http-events,grpc --large-accounts $(BENCH_LARGE) --json bench.jsonl
	$(GO) test -run '^$$' -bench . -benchtime 3s ./ledger/...
	@echo "failover on a local three-instance shard (kill -9 of the primary under load; full log in bench-failover.log):"
	@$(GO) test -count=1 -v -run 'TestKillPrimaryUnderLoad|TestSwitchoverUnderLoad' ./failover > bench-failover.log 2>&1; \
	  rc=$$?; grep -E 'acknowledged writes|^(ok|FAIL)' bench-failover.log; exit $$rc

## bench-scale: the original design's scale on one shard (not part of make test): a
## database of SCALE_ACCOUNTS accounts and SCALE_ENTRIES journal entries over 12 monthly
## partitions, generated by COPY, measured beside a 10,000-account one in the same run:
## balance reads, balances at a moment, history pages, uniform transfers at 64 clients,
## transfers paced at 2,000/s, verify full and incremental, bytes per account and entry.
## About 40 GB of disk and an hour at full size on 2 cores; smaller sizes show the same shape.
SCALE_ACCOUNTS ?= 10000000
SCALE_ENTRIES  ?= 100000000
bench-scale: deps build
	$(BIN) bench scale --accounts $(SCALE_ACCOUNTS) --entries $(SCALE_ENTRIES) --json bench-scale.jsonl

## fuzz: run each fuzzer for a while (their seeds also run in `make test`).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./ledger/money
	$(GO) test -run '^$$' -fuzz FuzzDecodeTransfer -fuzztime 30s ./ledger/httpapi
	$(GO) test -run '^$$' -fuzz FuzzCanonicalAgainstPostgres -fuzztime 60s ./ledger/metadata

## image: the one container image (needs a container runtime).
image:
	docker build -t $(IMAGE) .

## e2e: deploy the operator and a LedgerCluster to the cluster KUBECONFIG names, and check
## it end to end. Build and load IMAGE first (for kind: make image && kind load docker-image $(IMAGE)).
e2e: $(KUSTOMIZE)
	IMAGE=$(IMAGE) KUSTOMIZE=$(KUSTOMIZE) hack/e2e.sh

## e2e-local: bring up a single-node Kubernetes on this machine (needs root; binaries and
## images built once and cached under $(CACHE)), run the e2e on it, and take it down again,
## also on failure. KEEP=1 leaves it running and says how to use it.
e2e-local: $(KUSTOMIZE)
	KEEP=$(KEEP) KUSTOMIZE=$(KUSTOMIZE) hack/e2e-local.sh

clean:
	rm -rf bin

# Tally. `make dev` runs the ledger locally; `make test` runs every test.
GO            ?= go
BIN           := bin/tally
CACHE         ?= $(HOME)/.cache/tally
TOOLS         := $(CACHE)/bin
STATICCHECK   := $(TOOLS)/staticcheck
STATICCHECK_VERSION := v0.8.2
BENCH_TIME    ?= 10s

.PHONY: all build test lint fmt dev bench fuzz deps clean

all: build

build:
	$(GO) build -o $(BIN) .

deps:
	hack/ensure-deps.sh

## test: lint, then every test with the race detector, against real PostgreSQL.
test: deps lint
	$(GO) test -race -count=1 ./...

$(STATICCHECK):
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(STATICCHECK)
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

fmt:
	gofmt -w .

## dev: PostgreSQL in .tally/dev and the ledger API on 127.0.0.1:8080.
dev: deps build
	$(BIN) dev

## bench: Go benchmarks of the store against real PostgreSQL; prints numbers.
bench: deps
	$(GO) test -run '^$$' -bench . -benchtime $(BENCH_TIME) ./ledger/...

## fuzz: run each fuzzer for a while (the seeds also run in `make test`).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./ledger/money
	$(GO) test -run '^$$' -fuzz FuzzDecodeTransfer -fuzztime 30s ./ledger/httpapi

clean:
	rm -rf bin

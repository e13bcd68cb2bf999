GO        ?= go
BIN       ?= bin/pgsidecar
PKGS      ?= ./...
BENCHTIME ?= 2s
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w \
	-X github.com/prometheus/common/version.Version=$(VERSION) \
	-X github.com/prometheus/common/version.Revision=$(REVISION) \
	-X github.com/prometheus/common/version.Branch=main

FUZZTIME  ?= 10000x

# scripts/deps.sh fetches Go into .toolchain/ when the machine's is missing or too old.
export PATH := $(CURDIR)/.toolchain/go/bin:$(PATH):/usr/local/go/bin

.PHONY: fuzz-isolation all build test test-monitoring test-pg17 lint demo bench bench-proxy deps fmt fuzz docs mixin

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) .

deps:
	./scripts/deps.sh

test: deps
	$(GO) vet $(PKGS)
	# One package at a time: the proxy's suites (pgx's own tests, the isolation oracle) time
	# clients against a loaded 2-core machine, and other packages' tests beside them made them
	# flaky.
	$(GO) test -race -count=1 -p 1 -timeout 30m $(PKGS)
	$(MAKE) test-monitoring
	$(MAKE) fuzz

# Each fuzz target briefly (go test -fuzz takes one target at a time); seeds live in testdata/fuzz.
# FUZZTIME is an execution count: a duration races Go 1.26's fuzz coordinator at the deadline and
# fails with a bare "context deadline exceeded" on a busy machine (golang/go#75804, fixed in 1.27).
# A target may name its own count after a second colon (./pkg/:FuzzX:500x), for a target whose
# executions are slow.
FUZZ_TARGETS := ./pool/:FuzzClassifyOperation ./pool/:FuzzParseDuration ./internal/redact/:FuzzRedactDSN \
	./pool/:FuzzFromEnv ./collector/:FuzzParseQueries ./proxy/:FuzzStartupPacket \
	./proxy/:FuzzSCRAMExchange ./proxy/:FuzzDecodeError ./internal/sqlnorm/:FuzzNormalize \
	./internal/sqlstate/:FuzzLabel ./internal/fingerprint/:FuzzSum ./internal/sessionsql/:FuzzAnalyze
fuzz:
	@for pt in $(FUZZ_TARGETS); do \
		pkg=$${pt%%:*}; t=$${pt#*:}; n=$(FUZZTIME); \
		case $$t in *:*) n=$${t#*:}; t=$${t%%:*};; esac; echo "fuzz $$pkg $$t"; \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $$n -timeout 5m $$pkg > fuzz.out 2>&1 || { cat fuzz.out; rm -f fuzz.out; exit 1; }; \
	done; rm -f fuzz.out

# The proxy's isolation oracle as a fuzz target (a seed per execution, a whole case against the
# cluster). Kept out of make fuzz, which make test runs, since make test already runs the
# oracle's 2,000 scripts; a worker that once died here was a client left waiting for a server
# connection the proxy had lost (fixed since).
fuzz-isolation:
	$(GO) test -run '^$$' -fuzz '^FuzzIsolation$$' -fuzztime $${FUZZTIME_ISOLATION:-500x} -timeout 10m ./proxy/

# Alert rules, scrape and Alertmanager configs, dashboards and the end-to-end module.
test-monitoring:
	promtool check rules alerts/pgsidecar.rules.yml
	promtool test rules alerts/tests/*.test.yml
	promtool check config deploy/prometheus/prometheus.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	cd e2e && export GOFLAGS=-mod=mod && $(GO) vet ./... && $(GO) test -race -count=1 -timeout 15m ./...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

# The collectors' and the binary's tests against PostgreSQL 17 (Debian 13's packages, which
# scripts/postgres17.sh unpacks into .toolchain/ on Debian 12): the version paths the
# PostgreSQL 15 of make test does not reach. Not part of make test.
test-pg17: deps
	PATH="$$(./scripts/postgres17.sh):$$PATH" $(GO) test -count=1 -p 1 -timeout 20m ./collector/ .

# Regenerates docs/reference.md (flags, environment variables, metrics) from the code, with no
# database.
docs: deps
	$(GO) test -count=1 -run '^TestReferenceDocs$$' . -update

# Regenerates alerts/pgsidecar.rules.yml, dashboards/*.json, mixin/mixin.libsonnet and the Helm
# chart's copies of the rules and dashboards from mixin/ and the thresholds in
# internal/thresholds.
mixin:
	$(GO) run ./mixin/cmd/mixin -root .

fmt:
	gofmt -w $$(git ls-files '*.go')

demo: deps build
	$(GO) run ./examples/demo $(DEMO_ARGS)

# Go benchmarks of every package; BENCHMARKS.md has the side-by-side runs and how to read them.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -count 6 ./pool/ ./collector/ ./api/ | tee bench-go.txt
	$(GO) test -run '^$$' -bench PgbenchSelectOnly -benchtime 1x ./proxy/ | tee bench-proxy.txt

# The proxy against PgBouncer, each in its own process: transaction and session pooling, idle
# clients' memory, connection churn (about 25 minutes; skips without pgbench or pgbouncer).
bench-proxy: deps
	./scripts/proxy-bench.sh

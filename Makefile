GO        ?= go
BIN       ?= bin/pgsidecar
PKGS      ?= ./...
BENCHTIME ?= 2s

.PHONY: all build test lint demo bench deps fmt

all: build

build:
	$(GO) build -o $(BIN) .

deps:
	./scripts/deps.sh

test: deps
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet $(PKGS)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

demo: deps build
	./scripts/demo.sh

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -count 6 ./pool/ | tee bench-pool.txt

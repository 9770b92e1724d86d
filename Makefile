# netseg's build. Every target runs from a clean checkout; "test" and "demo"
# first install what they need (hack/setup.sh [--test], as root, idempotent).
GO       ?= go
BIN      := bin
PKGS     := ./...
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build setup setup-test test unit e2e faults race bench fuzz lint generate verify demo clean

all: build

# Static binaries, as deploy/Dockerfile ships them: the CNI plugin runs on
# hosts whatever their C library, and is exec'd once per container, so it
# must start fast (docs/cni-plugin.md has the figures).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/netseg-agent ./cmd/netseg-agent
	CGO_ENABLED=0 $(GO) build -o $(BIN)/netseg ./cni-plugin
	CGO_ENABLED=0 $(GO) build -o $(BIN)/netsegctl ./cmd/netsegctl

setup:
	bash hack/setup.sh

setup-test:
	bash hack/setup.sh --test

# The whole suite: unit, kernel (lab namespaces) and end-to-end tests.
# -p 1: kernel tests share one machine's CPU and conntrack; serial runs keep
# their timing honest on 2 cores.
test: setup-test build
	$(GO) test -count=1 -p 1 -timeout 30m $(PKGS)

# Unit tests only: no root, no kernel.
unit:
	$(GO) test -count=1 -short $(PKGS)

# The agent under the race detector against a real kernel: its packages'
# kernel tests with -race, then the end-to-end suite with a race-built
# agent binary (which stops at the first race it sees).
race: setup-test build
	$(GO) test -race -count=1 -p 1 -timeout 30m ./controller/node/ ./controller/flowlog/ ./controller/enforce/ ./dataplane/...
	NETSEG_E2E_RACE=1 $(GO) test -count=1 -p 1 -timeout 30m ./e2e/

# The fault-injection suite alone (it is part of test): each fault logs a
# row "FAULT | fault | denied admitted | established dropped | lost |
# recovered in" (make faults | grep 'FAULT |' gives the table).
faults: setup-test build
	$(GO) test -count=1 -p 1 -timeout 30m -v -run 'Fault|KillDuring|APIOutage|APIFlapping|BrNetfilterSwitchedOff|AgentKilledUnderTraffic|RecoversFromFullDisk|MovesTornEntriesAside' ./e2e/ ./controller/flowlog/ ./controller/node/

e2e: setup-test build
	$(GO) test -count=1 -p 1 -timeout 30m ./e2e/...

bench: setup-test build
	$(GO) test -count=1 -p 1 -run '^$$' -bench . -benchmem $(PKGS)

lint:
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)

generate:
	bash hack/generate.sh

verify:
	bash hack/verify.sh

# The README's first command. ARGS="--rounds 0" runs until Ctrl-C. The demo
# is its own program (e2e/demo/cmd/netseg-demo) because it drives the test
# lab, which the production binaries do not link.
demo: setup build
	$(GO) build -o $(BIN)/netseg-demo ./e2e/demo/cmd/netseg-demo
	bash hack/demo.sh $(ARGS)

clean:
	rm -rf $(BIN)

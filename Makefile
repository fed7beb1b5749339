# hangar — the two commands: `make run` and `make test` (see README.md).
#
# Heavy artifacts (kernel, root filesystems) are cached outside the clone in
# $(DATA_DIR)/images, keyed by the hash of their inputs, so a second run is
# fast. Every stage prints how long it took; `make test` ends with a table.

SHELL      := /bin/bash
GO         ?= go
DATA_DIR   ?= $(shell if [ "$$(id -u)" = 0 ]; then echo /var/lib/hangar; else echo $$HOME/.local/share/hangar; fi)
VERSION    ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS    := -s -w -X github.com/hangar-vm/hangar/internal/daemon.Version=$(VERSION)
STAGE      := ./scripts/stage.sh
# Packages whose tests exercise concurrency run under the race detector.
RACE_PKGS  := ./internal/store/... ./internal/tasks/... ./internal/events/... ./internal/agent/... ./internal/agentlink/... \
              ./internal/vm/... ./internal/login/... ./internal/daemon/... ./internal/config/... \
              ./internal/creds/... ./internal/prompt/...
TEST_TIMEOUT ?= 50m

export HANGAR_STAGE_LOG ?= $(CURDIR)/.stages.log

.PHONY: install run test deps test-deps build images vet unit bench fuzz clean stage-summary

## run: install what is missing, build, build the guest images, start the daemon
run: deps build images
	@echo
	@echo "Starting hangar (data dir $(DATA_DIR)); it prints where it listens (default"
	@echo "http://127.0.0.1:4000, the dashboard at /) and where the admin API key is."
	@echo "Try, in another terminal:  bin/hangar me   |   bin/hangar doctor   |   bin/hangar vm create base"
	@echo
	exec bin/hangar serve --data-dir $(DATA_DIR)

## install: the binaries in $(PREFIX)/bin and the systemd unit (systemctl enable --now hangar)
PREFIX ?= /usr/local
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)/etc/systemd/system
	install -m 0755 bin/hangar bin/hangar-agent $(DESTDIR)$(PREFIX)/bin/
	sed 's#/usr/local/bin/hangar#$(PREFIX)/bin/hangar#' deploy/systemd/hangar.service > $(DESTDIR)/etc/systemd/system/hangar.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed; start it with: systemctl enable --now hangar   (logs: journalctl -u hangar)"

## test: the whole suite (installs and starts what the tests need)
test:
	@rm -f $(HANGAR_STAGE_LOG)
	@$(MAKE) --no-print-directory test-stages; rc=$$?; $(MAKE) --no-print-directory stage-summary; exit $$rc

test-stages: test-deps build images vet
	@export HANGAR_TEST_POSTGRES=$$(./scripts/test-postgres.sh | tail -n1) && \
	  echo "Postgres for tests: $$HANGAR_TEST_POSTGRES" && \
	  export CI=$${CI:-false} HANGAR_DATA_DIR=$(DATA_DIR) && \
	  $(STAGE) "go test" $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./... 2>&1 | ./scripts/test-report.sh && \
	  $(STAGE) "go test -race" $(GO) test -count=1 -race -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

stage-summary:
	@if [ -f $(HANGAR_STAGE_LOG) ]; then echo; echo "Stage times:"; cat $(HANGAR_STAGE_LOG); fi

deps:
	@$(STAGE) deps ./scripts/deps.sh

test-deps:
	@$(STAGE) "deps (test)" ./scripts/deps.sh test
	@$(STAGE) postgres ./scripts/test-postgres.sh

build:
	@$(STAGE) build sh -c '$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/hangar ./cmd/hangar && \
	  CGO_ENABLED=0 GOAMD64=v1 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/hangar-agent ./cmd/hangar-agent'

images: build
	@$(STAGE) images bin/hangar image build --all --data-dir $(DATA_DIR)

vet:
	@$(STAGE) vet $(GO) vet ./...

## bench: measure hangar against baselines built and booted in the same run
## (not part of make test). QUICK=1 runs the reduced set in a few minutes.
## Writes bench/results/<date>-<host>[-quick].{json,md} and PNG charts.
bench: build images
	@$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/hangar-bench ./cmd/hangar-bench
	bin/hangar-bench --data-dir $(DATA_DIR) --version $(VERSION) --out bench/results $(if $(filter-out 0,$(QUICK)),--quick,--quick=false)

# Fuzz targets of what a guest or a browser feeds the host. `go test` runs
# their seed corpora; this runs each for FUZZTIME (go test -fuzz takes one
# target at a time).
FUZZTIME ?= 10m
FUZZ_TARGETS := ./internal/agentlink/proto:FuzzReadFrame ./internal/agentlink/proto:FuzzServerHandshake \
  ./internal/agentlink/proto:FuzzReadMarkedLine ./internal/liveview:FuzzViewOnlyFilter \
  ./internal/login:FuzzProviderOutput ./internal/login:FuzzCredentialJSON \
  ./internal/netslot:FuzzDNSQuery ./internal/netslot:FuzzCapTTLs ./internal/netslot:FuzzSOCKSConnect
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== $${t#*:} ($${t%%:*}) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) $${t%%:*}; \
	done

clean:
	rm -rf bin .stages.log

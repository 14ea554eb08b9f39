# pgporter — the two commands: `make demo` and `make test`.
# Each installs what it needs first (scripts/setup), then builds.

GO      ?= go
BIN     := bin/pgporter
PKGS    := ./...
# Packages whose tests also run under the race detector.
CORE    := ./chunkstore/... ./protocol/... ./mover/... ./orchestrator/... ./staging/...
FUZZTIME ?= 10s
# What `pgporter version` prints (internal/buildinfo): the release (the last
# v* tag, git describe; v0.0.0-devel before the first), the commit, and the
# build date.
VERSION ?= $(shell git describe --tags --match 'v*' 2>/dev/null || echo v0.0.0-devel)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
BUILDINFO := github.com/pgporter/pgporter/internal/buildinfo
LDFLAGS := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT) -X $(BUILDINFO).date=$(DATE)

.PHONY: all setup build test unit race vet fmt-check purego fuzz bench bench-harness demo clean

all: build

setup:
	@scripts/setup

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/pgporter

# Every test, with the real PostgreSQL, FUSE and QUIC; then the race detector
# on the core packages and a short run of every fuzz target.
test: setup build fmt-check vet purego
	$(GO) test -count=1 -timeout 20m $(PKGS)
	$(GO) test -count=1 -race -timeout 20m $(CORE)
	@$(MAKE) --no-print-directory fuzz FUZZTIME=5s

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# Builds without cgo must still build and encode: chunkstore then uses
# klauspost/compress's zstd encoder instead of the C library's.
purego:
	CGO_ENABLED=0 $(GO) build ./...
	CGO_ENABLED=0 $(GO) test -count=1 -run 'Codec|Compress|Decompress' ./chunkstore/

# Runs each Fuzz* target for FUZZTIME.
fuzz:
	@scripts/fuzz $(FUZZTIME)

# Benchmarks; figures go to docs/BENCHMARKS.md.
bench: setup build
	$(GO) test -run '^$$' -bench . -benchmem -count 1 -timeout 60m ./chunkstore/... ./protocol/... ./mover/...
	scripts/bench-pgdump
	scripts/bench-transfer
	scripts/bench-repo
	scripts/bench-export

# The Go benchmark harness (issue 17): the chunk engine, the LAN cold
# transfer against rsync and tar|zstd|nc, and the export from a backup
# against mount + postgres + pg_dump + rsync (about 5 minutes at its default
# scale, 30 s of settling before each run). Results (JSON, benchstat
# lines, Markdown tables, SVG charts) go to bench/results; BENCH_FLAGS adds
# flags, e.g. BENCH_FLAGS="--data /var/tmp/lan-dump --runs 3" (see
# 'go run ./bench/cmd/pgporter-bench --help'). The lock keeps benchmark runs
# that share the machine from overlapping.
BENCH_FLAGS ?=
bench-harness: setup
	flock /tmp/pgporter-bench.lock $(GO) run ./bench/cmd/pgporter-bench $(BENCH_FLAGS)

demo: setup build
	scripts/demo

# The long fault profile (issue 8): SIGKILL of each process of a cross-host
# export at SOAK_PER_PROCESS seeded random points (SOAK_SEED to replay a
# run), each followed by restart and retry, the result compared with a
# fault-free run's. Figures go to docs/reliability-soak.{json,md}, quoted
# in docs/RELIABILITY.md. Then the link faults' long profile: outage windows
# of 1 s to 60 s and a lossy 400 ms link (PGPORTER_SOAK=1).
SOAK_PER_PROCESS ?= 25
SOAK_SEED        ?=
.PHONY: soak
soak: setup build
	PGPORTER_FAULTS_PER_PROCESS=$(SOAK_PER_PROCESS) $(if $(SOAK_SEED),PGPORTER_FAULT_SEED=$(SOAK_SEED)) \
	PGPORTER_FAULT_REPORT=$(CURDIR)/docs/reliability-soak.json \
	$(GO) test -count=1 -timeout 0 -v -run '^TestNetnsCrashMatrix$$' ./cmd/pgporter/
	PGPORTER_SOAK=1 $(GO) test -count=1 -timeout 0 -v -run '^TestNetnsLink' ./cmd/pgporter/

clean:
	rm -rf bin

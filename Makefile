# keygate — see README.md.
GO      ?= go
BIN     ?= bin/keygate
DATA    ?= ./keygate-data
# Caddy's admin endpoint (config API) is a unix socket only you may use.
ADMIN_SOCKET ?= ./keygate-admin.sock
export KEYGATE_OPERATOR_TOKEN ?= dev-operator-token

.PHONY: build run test bench fmt lint screenshots

build:
	$(GO) build -o $(BIN) ./cmd/keygate

# Start the gateway on the embedded default: Pebble in $(DATA), a demo
# upstream on :9000, the gateway on :8080 and the admin API on :8081 (all on
# 127.0.0.1), Caddy's admin endpoint on the unix socket $(ADMIN_SOCKET) (0600).
run: build
	@mkdir -p $(DATA)
	@echo "keygate: gateway http://127.0.0.1:8080  admin API http://127.0.0.1:8081  demo upstream :9000  storage $(DATA)"
	@echo "console: http://127.0.0.1:8081/console/ (sign in with the operator token \$$KEYGATE_OPERATOR_TOKEN)"
	@echo "Caddy admin endpoint: unix socket $(ADMIN_SOCKET) (mode 0600); reload with: KEYGATE_STORAGE=$(DATA) KEYGATE_ADMIN_SOCKET=$(ADMIN_SOCKET) $(BIN) reload --config Caddyfile.example --adapter caddyfile"
	@echo "Next, in another shell (README.md, 'First key' and the walkthrough):"
	@echo "  OP=$$KEYGATE_OPERATOR_TOKEN; API=http://127.0.0.1:8081"
	@echo "  curl -s -X PATCH \$$API/v1/tenants/default/settings -H \"Authorization: Bearer \$$OP\" -d '{\"api_keys_enabled\": true}'"
	@echo "  curl -s -X POST \$$API/v1/tenants/default/keys -H \"Authorization: Bearer \$$OP\" -d '{\"name\": \"my first key\", \"owner\": \"demo\"}'"
	@echo "  curl -s http://127.0.0.1:8080/ -H \"X-API-Key: <the secret from the answer>\""
	KEYGATE_STORAGE=$(DATA) KEYGATE_ADMIN_SOCKET=$(ADMIN_SOCKET) $(BIN) run --config Caddyfile.example --adapter caddyfile

test:
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...
	KEYGATE_STORE_TESTS=etcd $(GO) test -race -count=1 ./store/

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./store/ ./caddymodule/

fmt:
	gofmt -w $$(git ls-files '*.go')

# gofmt, go vet and staticcheck (pinned; fetched through the Go module proxy
# on first use). The rule that store/ and admin/ import nothing from Caddy is
# a test (store/arch_test.go), so make test enforces it too.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt wants to change:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) test -count=1 -run '^TestArchitecture$$' ./store/

# Regenerate the console screenshots shown in README.md (not run in CI):
# the browser test of caddymodule/console_test.go saves every page it
# visits; the keys page, the generate form and modal, and Settings are kept.
SHOTS ?= admin/console/screenshots
screenshots:
	@tmp=$$(mktemp -d) && \
	KEYGATE_CONSOLE_SCREENSHOTS=$$tmp $(GO) test -count=1 -run '^TestConsoleInBrowser$$' ./caddymodule/ && \
	cp $$tmp/keys.png $$tmp/generate-form.png $$tmp/generate-secret.png $$tmp/settings.png $(SHOTS)/ && \
	rm -rf $$tmp && ls -l $(SHOTS)

# Crash durability (cmd/keygate-crash): kill -9 $(BIN) at random moments
# under concurrent admin API writes, restart it on the same store and check
# every acknowledged change; 20 crashes, about 30 s. CRASH_FLAGS=--seed N
# replays a run; CRASH_FLAGS="--etcd --kill-etcd-every 5" runs it on an etcd
# started on loopback (etcd on PATH).
CRASH_FLAGS ?=
.PHONY: test-crash
test-crash: build
	$(GO) run ./cmd/keygate-crash --iterations 20 --bin $(BIN) $(CRASH_FLAGS)

# Load benchmark against plain Caddy (cmd/keygate-bench): one keygate serves
# A = reverse_proxy alone and B = api_key + the identical reverse_proxy, on
# loopback, alternately; 10k keys (uniform, Zipf, 401 garbage/malformed, and
# 1000 unknown keys against a plain `respond 401` site) and 1M keys with a 100k
# cache (miss path). About 6-7 minutes; BENCH_FLAGS=--quick
# for a one-minute sanity run. Results: bench-results.md and .json.
BENCH_FLAGS ?=
.PHONY: bench-load
bench-load: build
	$(GO) build -o bin/keygate-bench ./cmd/keygate-bench
	bin/keygate-bench --bin $(BIN) --big $(BENCH_FLAGS)

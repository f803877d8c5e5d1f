# pss-operator — every developer and CI entry point. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/debug/pss-operator

.PHONY: crds install run deploy undeploy docker-build help build test lint fmt-check clippy test-unit test-e2e demo bench bench-metrics bench-upstream bench-scale fixtures check-seed fuzz deny

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build the pss-operator binary
	$(CARGO) build --bin pss-operator

test: lint test-unit test-e2e test-observability ## Run every test: fmt, clippy, unit, conformance, CLI, properties, end-to-end, alerts/dashboard

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

test-unit: ## Unit, conformance (4,537 upstream fixtures), CLI, property and short fuzz tests — no cluster needed
	$(CARGO) test --lib --bins --test conformance --test check_cli --test properties --test fuzz
	$(CARGO) test --doc

test-e2e: e2e-test faults-test ## End-to-end tests on a real kube-apiserver + etcd + kube-controller-manager (then faults, load, hostile input)

PSS_FUZZ_CASES ?= 20000
fuzz: ## Bounded fuzzing of the evaluator and manifest reader (PSS_FUZZ_CASES inputs per generator, default 20000: ~160,000 inputs)
	PSS_FUZZ_CASES=$(PSS_FUZZ_CASES) $(CARGO) test --test fuzz -- --nocapture --test-threads=1

deny: ## cargo deny: licenses, bans, sources (and advisories when a local advisory database exists)
	$(CARGO) deny check licenses bans sources

check-seed: build ## Evaluate the seed article's manifests offline
	-$(BIN) check --level baseline examples/seed/
	-$(BIN) check --level restricted examples/seed/

demo: check-seed demo-cluster demo-operator ## The main job: the seed scenario offline, on a real control plane, then with the operator

# Operator targets use $KUBECONFIG, or the local control plane (started if needed) when it is unset.
KUBE_ENV = if [[ -z "$${KUBECONFIG:-}" ]]; then export KUBECONFIG=$$(e2e/scripts/cluster-up.sh | tail -n1); \
	  export PATH="$$(e2e/scripts/build-binaries.sh 2>/dev/null | tail -n1):$$PATH"; fi

crds: build ## Regenerate crds/ and config/crd/ from the Rust types
	$(BIN) crd > crds/podsecurityprofiles.yaml
	cp crds/podsecurityprofiles.yaml config/crd/podsecurityprofiles.yaml

install: ## Install the PodSecurityProfile CRD into the cluster
	@$(KUBE_ENV); kubectl apply --server-side -f crds/

run: build install ## Run the operator locally against the cluster (metrics on 127.0.0.1:8080)
	@$(KUBE_ENV); $(BIN) run --metrics-addr 127.0.0.1:8080

deploy: ## Deploy CRD, RBAC and the operator Deployment (config/default)
	@$(KUBE_ENV); kubectl apply --server-side -k config/default

undeploy: ## Remove what deploy created
	@$(KUBE_ENV); kubectl delete --ignore-not-found -k config/default

docker-build: ## Build the container image (needs a Docker engine)
	docker build -t pss-operator:latest .

bench: ## Criterion benchmark: evaluations/s over the conformance corpus
	$(CARGO) bench --bench evaluate

bench-metrics: ## /metrics at 2,000 namespaces: render and publish time, rendered size, RSS held and scrape peak
	$(CARGO) bench --bench metrics --bench metrics_memory

bench-upstream: ## Ours vs the upstream Go library: identical verdicts, pods/s per core (needs Go)
	$(CARGO) bench --bench vs_upstream

BENCH_DIR ?= /tmp/pss-bench-scale
SCALE := e2e/bench/scale.py
bench-scale: ## Cluster scale (2,000 namespaces, 10k then 50k Pods; 200 namespaces, 10k Pods): start, RSS, requests, idle, latency
	$(CARGO) build --release --bin pss-operator
	mkdir -p $(BENCH_DIR)
	$(SCALE) --cluster-dir $(BENCH_DIR)/ns2000 --namespaces 2000 --pods 10000 --idle 60 --out $(BENCH_DIR)/ns2000-pods10k.json
	$(SCALE) --cluster-dir $(BENCH_DIR)/ns2000 --namespaces 2000 --pods 50000 --idle 300 --out $(BENCH_DIR)/ns2000-pods50k.json --down
	$(SCALE) --cluster-dir $(BENCH_DIR)/ns200 --namespaces 200 --pods 10000 --idle 60 --out $(BENCH_DIR)/ns200-pods10k.json --down

fixtures: ## Refresh tests/fixtures/pss from the Go module k8s.io/pod-security-admission
	dir=$$(go mod download -json k8s.io/pod-security-admission@v0.37.2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); \
	rm -rf tests/fixtures/pss/{baseline,restricted}; cp -r "$$dir"/test/testdata/{baseline,restricted,README.md} tests/fixtures/pss/; \
	cp "$$dir"/LICENSE tests/fixtures/pss/LICENSE; chmod -R u+w tests/fixtures/pss

include e2e/cluster.mk
include config/observability.mk

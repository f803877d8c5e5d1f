# pss-operator — every developer and CI entry point. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/debug/pss-operator

.PHONY: crds install run deploy undeploy docker-build image help build test lint fmt-check clippy test-unit test-e2e demo bench bench-metrics bench-upstream bench-scale fixtures check-seed fuzz deny
.PHONY: install-kubectl-plugin krew-archive
.PHONY: tools preflight preflight-demo tool-prometheus tool-python tool-helm test-chart chart-files helm-install helm-uninstall e2e-node

help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build the pss-operator binary
	$(CARGO) build --bin pss-operator

test: tools lint test-unit test-e2e test-observability test-chart ## Run every test: fmt, clippy, unit, conformance, CLI, properties, end-to-end, alerts/dashboard, Helm chart

lint: fmt-check clippy

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

test-unit: ## Unit, conformance (4,537 upstream fixtures), CLI, property and short fuzz tests — no cluster needed
	$(CARGO) test --lib --bins --test conformance --test check_cli --test properties --test fuzz
	$(CARGO) test --doc

test-e2e: e2e-test e2e-test-second faults-test ## End-to-end tests on a real kube-apiserver + etcd + kube-controller-manager, at v1.37 and v1.31 (then faults, load, hostile input)

PSS_FUZZ_CASES ?= 20000
fuzz: ## Bounded fuzzing of the evaluator and manifest reader (PSS_FUZZ_CASES inputs per generator, default 20000: ~160,000 inputs)
	PSS_FUZZ_CASES=$(PSS_FUZZ_CASES) $(CARGO) test --test fuzz -- --nocapture --test-threads=1

deny: ## cargo deny: licenses, bans, sources (and advisories when a local advisory database exists)
	$(CARGO) deny check licenses bans sources

check-seed: build ## Evaluate the seed article's manifests offline
	-$(BIN) check --level baseline examples/seed/
	-$(BIN) check --level restricted examples/seed/

demo: preflight-demo check-seed demo-cluster demo-operator ## The main job: the seed scenario offline, on a real control plane, then with the operator

# ---- Tools -------------------------------------------------------------------------------------
# `make test` and `make demo` provide what they need. preflight.sh checks first, in about a second,
# what only the system can provide (cargo with rustfmt/clippy, a C toolchain, Go, openssl, python3
# with venv, node/npm; curl for the demo) and stops with one line per missing thing and the command
# that installs it. The rest is built or installed once, keyed by version, into the cache
# ${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/pss-operator} and reused: the control plane
# (e2e/scripts/build-binaries.sh), promtool and prometheus (e2e/scripts/build-prometheus.sh), a
# Python virtual environment with requirements.txt (e2e/scripts/python-env.sh), helm
# (e2e/scripts/build-helm.sh); the dashboard check's npm packages go to
# config/observability/schema-check/node_modules (npm ci).
# PROMTOOL=, PROMETHEUS_BIN=, PYTHON=, HELM= (make variables or environment) use your own copies
# instead. PSS_REQUIRE_CACHED_TOOLS=1 (set by .ci/run) makes `make tools` fail unless they are the
# cached copies, so CI proves they are what the tests ran with.
PROM_BIN_DIR := $(shell e2e/scripts/build-prometheus.sh --print-dir)
PY_BIN_DIR := $(shell e2e/scripts/python-env.sh --print-dir)
HELM_BIN_DIR := $(shell e2e/scripts/build-helm.sh --print-dir)
PROMTOOL ?= $(PROM_BIN_DIR)/promtool
PROMETHEUS_BIN ?= $(PROM_BIN_DIR)/prometheus
PYTHON ?= $(PY_BIN_DIR)/python
HELM ?= $(HELM_BIN_DIR)/helm

tools: preflight e2e-binaries tool-prometheus tool-python tool-npm tool-helm ## Check the system, then build/install (once, cached by version) every tool `make test` uses; lists them
	@printf '  %-15s %s\n' \
	  control-plane "$$(e2e/scripts/build-binaries.sh 2>/dev/null | tail -n1)" \
	  control-plane "$$(K8S_VERSION=$(K8S_SECOND_VERSION) e2e/scripts/build-binaries.sh 2>/dev/null | tail -n1)" \
	  promtool "$(PROMTOOL) ($$($(PROMTOOL) --version 2>&1 | head -n1))" \
	  prometheus "$(PROMETHEUS_BIN) ($$($(PROMETHEUS_BIN) --version 2>&1 | head -n1))" \
	  python "$(PYTHON) ($$($(PYTHON) -c 'import platform, yaml; print("Python", platform.python_version(), "with PyYAML", yaml.__version__)'))" \
	  npm "$(OBS_SCHEMA)/node_modules (npm ci, package-lock.json)" \
	  helm "$(HELM) ($$($(HELM) version --template '{{.Version}}'))"
	@if [[ -n "$${PSS_REQUIRE_CACHED_TOOLS:-}" ]]; then \
	  for pair in "$(PROMTOOL)=$(PROM_BIN_DIR)/promtool" "$(PROMETHEUS_BIN)=$(PROM_BIN_DIR)/prometheus" "$(PYTHON)=$(PY_BIN_DIR)/python" "$(HELM)=$(HELM_BIN_DIR)/helm"; do \
	    [[ "$${pair%%=*}" == "$${pair#*=}" ]] || { echo "PSS_REQUIRE_CACHED_TOOLS: $${pair%%=*} is not the cached $${pair#*=}" >&2; exit 1; }; \
	  done; \
	  yaml=$$($(PYTHON) -c 'import yaml; print(yaml.__file__)'); \
	  [[ "$$yaml" == "$(PY_BIN_DIR:%/bin=%)"/* ]] || { echo "PSS_REQUIRE_CACHED_TOOLS: PyYAML comes from $$yaml, not the cached environment" >&2; exit 1; }; \
	  echo "  (PSS_REQUIRE_CACHED_TOOLS: promtool, prometheus, python and helm are the cached copies)"; \
	fi

preflight: ## Check, in about a second, what `make test` needs from the system (one line per missing thing, with its install command)
	@e2e/scripts/preflight.sh test

preflight-demo:
	@e2e/scripts/preflight.sh demo

# Built only when the variable still names the cached copy.
tool-prometheus:
	@$(if $(filter $(PROM_BIN_DIR)/%,$(PROMTOOL) $(PROMETHEUS_BIN)),e2e/scripts/build-prometheus.sh >/dev/null,:)

tool-python:
	@$(if $(filter $(PY_BIN_DIR)/%,$(PYTHON)),e2e/scripts/python-env.sh >/dev/null,:)

tool-helm:
	@$(if $(filter $(HELM_BIN_DIR)/%,$(HELM)),e2e/scripts/build-helm.sh >/dev/null,:)

# Operator targets use $KUBECONFIG, or the local control plane (started if needed) when it is unset.
KUBE_ENV = if [[ -z "$${KUBECONFIG:-}" ]]; then export KUBECONFIG=$$(e2e/scripts/cluster-up.sh | tail -n1); \
	  export PATH="$$(e2e/scripts/build-binaries.sh 2>/dev/null | tail -n1):$$PATH"; fi

# ---- kubectl plugin ----------------------------------------------------------------------------
# The binary is the plugin when called as kubectl-pss (krew's naming): a symlink is enough.
PLUGIN_DIR ?= $(HOME)/.local/bin
KREW_DIR := $(or $(CARGO_TARGET_DIR),target)/krew

install-kubectl-plugin: build ## Symlink the built binary as kubectl-pss into PLUGIN_DIR (default ~/.local/bin): `kubectl pss status|plan|check`
	mkdir -p "$(PLUGIN_DIR)"
	ln -sf "$(abspath $(BIN))" "$(PLUGIN_DIR)/kubectl-pss"
	@echo "kubectl-pss -> $(abspath $(BIN)) (is $(PLUGIN_DIR) on your PATH? kubectl plugin list shows it)"

krew-archive: ## The release binary as a krew archive and plugins/krew/pss.yaml with its sha256, in $(KREW_DIR)
	$(CARGO) build --profile dist --locked --bin pss-operator
	mkdir -p "$(KREW_DIR)"
	cp "$(or $(CARGO_TARGET_DIR),target)/dist/pss-operator" "$(KREW_DIR)/pss-operator"
	tar -C "$(KREW_DIR)" --owner=0 --group=0 --mtime=@0 -czf "$(KREW_DIR)/pss-operator-linux-amd64.tar.gz" pss-operator
	sed "s/@SHA256@/$$(sha256sum "$(KREW_DIR)/pss-operator-linux-amd64.tar.gz" | cut -d' ' -f1)/" plugins/krew/pss.yaml > "$(KREW_DIR)/pss.yaml"
	@echo "$(KREW_DIR)/pss.yaml, $(KREW_DIR)/pss-operator-linux-amd64.tar.gz"

crds: build ## Regenerate crds/, config/crd/ and the chart's copy from the Rust types
	$(BIN) crd > crds/podsecurityprofiles.yaml
	cp crds/podsecurityprofiles.yaml config/crd/podsecurityprofiles.yaml
	$(MAKE) --no-print-directory chart-files

install: ## Install the PodSecurityProfile CRD into the cluster
	@$(KUBE_ENV); kubectl apply --server-side -f crds/

run: build install ## Run the operator locally against the cluster (plain local metrics on http://127.0.0.1:8080)
	@$(KUBE_ENV); $(BIN) run --metrics-secure=false --metrics-addr 127.0.0.1:8080

deploy: ## Deploy CRD, RBAC and the operator Deployment (config/default)
	@$(KUBE_ENV); kubectl apply --server-side -k config/default

undeploy: ## Remove what deploy created
	@$(KUBE_ENV); kubectl delete --ignore-not-found -k config/default

# ---- Image and chart --------------------------------------------------------------------------
# One definition of the image, the Dockerfile's last stage (FROM scratch: the static binary, user
# 65532). `make image` builds the musl binary on the host and that stage around it with
# CONTAINER_TOOL (buildah, no Docker engine; or podman, docker), then saves it as an OCI archive and
# checks what it holds (e2e/scripts/image.sh, check_image.py). `make docker-build` compiles inside
# Docker instead (the Dockerfile's first stage).
IMG ?= pss-operator:latest
CONTAINER_TOOL ?= buildah
IMAGE_ARCHIVE ?= $(or $(CARGO_TARGET_DIR),target)/image/pss-operator.oci.tar

image: ## Static musl binary + the Dockerfile's image around it, without Docker (CONTAINER_TOOL=buildah|podman|docker, IMG=), saved as an OCI archive
	@IMG=$(IMG) CONTAINER_TOOL=$(CONTAINER_TOOL) IMAGE_ARCHIVE=$(IMAGE_ARCHIVE) e2e/scripts/image.sh

docker-build: ## Build the image inside Docker (needs a Docker engine; compiles in a Rust container)
	docker build --build-arg PSS_OPERATOR_COMMIT=$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown) -t $(IMG) .

# The chart (charts/pss-operator) holds copies of the CRD, the alert rules and the dashboard; these
# are written by `make crds`, `make generate-observability` and this target, and `make test-chart`
# fails when they differ from their sources.
chart-files: ## Copy the CRD, alert rules and dashboard into charts/pss-operator/files
	cp crds/podsecurityprofiles.yaml config/prometheus/pss-operator.rules.yaml \
	  config/grafana/pss-operator-dashboard.json config/reports/crds/openreports.io_reports.yaml \
	  charts/pss-operator/files/

test-chart: tool-helm tool-python e2e-binaries ## helm lint --strict; helm template (default values) renders kubectl kustomize config/default; copies in sync
	HELM=$(HELM) KUBECTL="$$(e2e/scripts/build-binaries.sh 2>/dev/null | tail -n1)/kubectl" \
	  $(PYTHON) charts/test_chart.py -v

# In-cluster end-to-end test on a real node (root: kubelet, containerd + runc, CNI bridge, iptables);
# node.sh preflight says in its first second what is missing. See e2e/README.md.
e2e-node: ## The image in-cluster on a real node (needs root): make deploy and helm install into pss-system, probes, leader, metrics, labels, drift, privileged Pod; nothing left
	@e2e/scripts/node.sh preflight
	@$(MAKE) --no-print-directory image tool-helm
	@e2e/scripts/build-binaries.sh --node >/dev/null
	IMG=$(IMG) IMAGE_ARCHIVE=$(IMAGE_ARCHIVE) HELM=$(HELM) e2e/scripts/e2e-node.sh

helm-install: tool-helm ## helm install the chart into pss-system (IMG= sets the image; the namespace must exist, labelled)
	@$(KUBE_ENV); img='$(IMG)'; $(HELM) upgrade --install pss-operator charts/pss-operator --namespace pss-system \
	  --set "image.repository=$${img%:*}" --set "image.tag=$${img##*:}" --wait

helm-uninstall: tool-helm ## helm uninstall the chart from pss-system
	@$(KUBE_ENV); $(HELM) uninstall pss-operator --namespace pss-system --wait

bench: ## Criterion benchmark: evaluations/s over the conformance corpus
	$(CARGO) bench --bench evaluate

bench-metrics: ## /metrics at 2,000 namespaces: render and publish time, rendered size, RSS held and scrape peak
	$(CARGO) bench --bench metrics --bench metrics_memory

bench-upstream: ## Ours vs the upstream Go library: identical verdicts, pods/s per core (needs Go)
	$(CARGO) bench --bench vs_upstream

BENCH_DIR ?= /tmp/pss-bench-scale
SCALE := e2e/bench/scale.py
bench-scale: ## The growth curve on one cluster grown in place, workloads included (1k/10k, 2k/50k, 5k/100k, 10k/150k namespaces/Pods; ~1 h here): start, RSS, CPU, requests, idle, latency, scrape size
	$(CARGO) build --release --bin pss-operator
	mkdir -p $(BENCH_DIR)
	$(SCALE) --cluster-dir $(BENCH_DIR)/curve --namespaces 1000 --pods 10000 --workloads 1700 --strip-labels --idle 60 --out $(BENCH_DIR)/ns1k-pods10k.json
	$(SCALE) --cluster-dir $(BENCH_DIR)/curve --namespaces 2000 --pods 50000 --workloads 8500 --strip-labels --idle 60 --out $(BENCH_DIR)/ns2k-pods50k.json
	$(SCALE) --cluster-dir $(BENCH_DIR)/curve --namespaces 5000 --pods 100000 --workloads 17000 --strip-labels --idle 60 --out $(BENCH_DIR)/ns5k-pods100k.json
	$(SCALE) --cluster-dir $(BENCH_DIR)/curve --namespaces 10000 --pods 150000 --workloads 25000 --strip-labels --idle 600 --out $(BENCH_DIR)/ns10k-pods150k.json --down

fixtures: ## Refresh tests/fixtures/pss from the Go module k8s.io/pod-security-admission
	dir=$$(go mod download -json k8s.io/pod-security-admission@v0.37.2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'); \
	rm -rf tests/fixtures/pss/{baseline,restricted}; cp -r "$$dir"/test/testdata/{baseline,restricted,README.md} tests/fixtures/pss/; \
	cp "$$dir"/LICENSE tests/fixtures/pss/LICENSE; chmod -R u+w tests/fixtures/pss

include e2e/cluster.mk
include config/observability.mk

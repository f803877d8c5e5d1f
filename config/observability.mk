# Alerts and dashboard (config/prometheus, config/grafana): generators and tests. Included by the
# top-level Makefile (`include config/observability.mk`); see config/observability/obs.py.
#
# Needs: promtool and prometheus ($(PROMTOOL), $(PROMETHEUS_BIN): Prometheus built from the Go module
# proxy into the cache by e2e/scripts/build-prometheus.sh), Python with PyYAML ($(PYTHON): a virtual
# environment from requirements.txt, e2e/scripts/python-env.sh), npm (Grafana schema check; npm ci
# into schema-check/node_modules), Go (Prometheus Operator API types, from the Go module proxy), the
# local control plane binaries (e2e/scripts/build-binaries.sh). The top-level Makefile defines those
# variables and the tool-* targets that provide them; `make tools` lists what is used.

OBS_CONFIG := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
OBS_TOOLS := $(OBS_CONFIG)/observability
OBS_SCHEMA := $(OBS_TOOLS)/schema-check
NPM ?= npm
CARGO ?= cargo
GO ?= go

.PHONY: generate-observability test-observability test-observability-rules test-observability-dashboard test-observability-e2e tool-npm

generate-observability: tool-python ## Regenerate config/prometheus/prometheusrule.yaml, config/grafana/configmap.yaml and the chart's copies from their sources
	$(PYTHON) $(OBS_TOOLS)/obs.py generate

test-observability: preflight test-observability-rules test-observability-dashboard test-observability-e2e ## Alerts and dashboard: promtool, Grafana schema, end to end with a real Prometheus

test-observability-rules: tool-prometheus tool-python ## promtool check/test rules; generated files in sync; ServiceMonitor wiring and strict decode; checker unit tests
	$(PROMTOOL) check rules $(OBS_CONFIG)/prometheus/pss-operator.rules.yaml
	$(PROMTOOL) test rules $(OBS_CONFIG)/prometheus/tests/pss-operator.rules.test.yaml
	$(PYTHON) $(OBS_TOOLS)/obs.py check-generated
	$(PYTHON) $(OBS_TOOLS)/obs.py check-wiring
	cd $(OBS_TOOLS)/crdcheck && $(GO) run . $(abspath $(OBS_CONFIG)/prometheus/monitor.yaml) $(abspath $(OBS_CONFIG)/prometheus/prometheusrule.yaml)
	$(PYTHON) -m unittest discover -s $(OBS_TOOLS) -p 'test_*.py'

$(OBS_SCHEMA)/node_modules/.package-lock.json: $(OBS_SCHEMA)/package.json $(OBS_SCHEMA)/package-lock.json
	cd $(OBS_SCHEMA) && $(NPM) ci --no-audit --no-fund --loglevel=error

tool-npm: $(OBS_SCHEMA)/node_modules/.package-lock.json

test-observability-dashboard: tool-prometheus tool-python tool-npm ## Dashboard structure, @grafana/schema type check, every panel query parsed by promtool
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(PYTHON) $(OBS_TOOLS)/obs.py check-dashboard "$$tmp" --ts $(OBS_SCHEMA)/dashboard.gen.ts && \
	  $(PROMTOOL) check rules "$$tmp/panel-queries.rules.yaml"
	cd $(OBS_SCHEMA) && ./node_modules/.bin/tsc -p tsconfig.json && echo "dashboard satisfies @grafana/schema's Dashboard type"

test-observability-e2e: e2e-binaries tool-prometheus tool-python ## Control plane + operator + real Prometheus: every panel has data, alerts fire, promtool check metrics
	$(CARGO) build --bin pss-operator
	PROMETHEUS_BIN=$(PROMETHEUS_BIN) PROMTOOL_BIN=$(PROMTOOL) $(PYTHON) $(OBS_TOOLS)/e2e.py

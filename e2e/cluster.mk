# Local control plane and end-to-end tests. Included by the top-level Makefile
# (`include e2e/cluster.mk`); every target also works from any directory via `make -f`.
# See e2e/README.md.

E2E_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
E2E_SCRIPTS := $(E2E_DIR)/scripts
E2E_CLUSTER_DIR := $(abspath $(or $(PSS_CLUSTER_DIR),$(E2E_DIR)/.cluster))
CARGO ?= cargo

.PHONY: e2e-binaries cluster-up cluster-down e2e-test e2e-test-second faults-test e2e-test-dev demo-cluster demo-operator

# The second Kubernetes version every verdict is proven on: the minor of the seed's EKS cluster.
# (v1.31.14 cannot be built here: the Go module proxy refuses three of its staging modules.)
K8S_SECOND_VERSION ?= v1.31.13

e2e-binaries: ## Build (once, cached by version) or locate etcd, kube-apiserver, kube-controller-manager, kubectl — for the default version and K8S_SECOND_VERSION
	@$(E2E_SCRIPTS)/build-binaries.sh >/dev/null
	@K8S_VERSION=$(K8S_SECOND_VERSION) $(E2E_SCRIPTS)/build-binaries.sh >/dev/null

NODE ?= 0
cluster-up: ## Start the local control plane; kubeconfig in e2e/.cluster/kubeconfig. NODE=1: and a real node (kubelet, containerd + runc, scheduler; needs root)
	@PSS_NODE=$(NODE) $(E2E_SCRIPTS)/cluster-up.sh

cluster-down: ## Stop the local control plane (and its node: Pods, mounts, cgroups, bridge, iptables chain) and delete its data
	@$(E2E_SCRIPTS)/cluster-down.sh

e2e-test: e2e-binaries ## End-to-end tests against a private control plane started (and stopped) by the test run
	$(CARGO) test --test e2e -- --show-output

e2e-test-second: e2e-binaries ## The same end-to-end tests against a private control plane of K8S_SECOND_VERSION (v1.31.13)
	K8S_VERSION=$(K8S_SECOND_VERSION) $(CARGO) test --test e2e -- --show-output

faults-test: e2e-binaries ## Faults (apiserver/etcd down, SIGKILL, failover), load and hostile input on their own private control plane
	$(CARGO) test --test faults -- --show-output

e2e-test-dev: cluster-up ## End-to-end tests against the `make cluster-up` control plane (kept running)
	PSS_E2E_USE_KUBECONFIG=1 KUBECONFIG=$(E2E_CLUSTER_DIR)/kubeconfig \
	  PSS_E2E_KUBECTL=$(E2E_CLUSTER_DIR)/bin/kubectl $(CARGO) test --test e2e -- --show-output

demo-cluster: ## Replay the seed article on the local control plane (started when KUBECONFIG is unset)
	@$(E2E_SCRIPTS)/demo.sh

demo-operator: ## The operator live: profile on namespace app, labels applied, drift repaired, a privileged Pod in status and /metrics
	@$(E2E_SCRIPTS)/demo-operator.sh

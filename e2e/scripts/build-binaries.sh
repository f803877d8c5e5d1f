#!/usr/bin/env bash
# Provides kube-apiserver, kube-controller-manager, kubectl and etcd for the local control plane,
# and with --node also kubelet, kube-scheduler and crictl (a real node: `make cluster-up NODE=1`;
# crictl is sigs.k8s.io/cri-tools $CRICTL_VERSION, default v1.<minor>.0 of $K8S_VERSION).
#
# Order of preference (first hit wins, nothing is built then):
#   1. TEST_ASSET_KUBE_APISERVER / TEST_ASSET_ETCD / TEST_ASSET_KUBECTL (+ TEST_ASSET_KUBE_CONTROLLER_MANAGER)
#   2. KUBEBUILDER_ASSETS (a folder holding those binaries)
#   3. the version-keyed cache below, built once from the Go module proxy and reused forever.
# Prints the folder holding the binaries on its last line of stdout; progress goes to stderr.
#   --node        also kubelet, kube-scheduler and crictl (built into the same folder; never taken
#                 from KUBEBUILDER_ASSETS, which has none)
#   --print-dir   only print the cache folder (nothing is built)
set -euo pipefail

NODE=false
case "${1:-}" in
  --node) NODE=true ;;
  --print-dir) PRINT_DIR=true ;;
  "") ;;
  *) echo "usage: $0 [--node|--print-dir]" >&2; exit 2 ;;
esac

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
CRICTL_VERSION=${CRICTL_VERSION:-$(echo "$K8S_VERSION" | sed -E 's/^(v1\.[0-9]+)\..*/\1.0/')}
CACHE_ROOT=${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pss-operator}
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-etcd-$ETCD_VERSION/bin"

log() { printf '[build-binaries] %s\n' "$*" >&2; }
if [[ -n "${PRINT_DIR:-}" ]]; then echo "$BIN_DIR"; exit 0; fi

# 1 + 2: caller-provided binaries (envtest conventions).
if [[ -n "${TEST_ASSET_KUBE_APISERVER:-}" || -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  # A folder of symlinks keyed by the inputs, so repeated runs reuse it instead of piling up temp dirs.
  key=$(printf '%s|' "${KUBEBUILDER_ASSETS:-}" "${TEST_ASSET_KUBE_APISERVER:-}" "${TEST_ASSET_ETCD:-}" \
    "${TEST_ASSET_KUBECTL:-}" "${TEST_ASSET_KUBE_CONTROLLER_MANAGER:-}" | sha256sum | cut -c1-16)
  dir="$CACHE_ROOT/provided-assets-$key"
  mkdir -p "$dir"
  for pair in kube-apiserver:TEST_ASSET_KUBE_APISERVER etcd:TEST_ASSET_ETCD kubectl:TEST_ASSET_KUBECTL \
              kube-controller-manager:TEST_ASSET_KUBE_CONTROLLER_MANAGER; do
    name=${pair%%:*}; var=${pair#*:}
    src=${!var:-}
    [[ -z "$src" && -n "${KUBEBUILDER_ASSETS:-}" ]] && src="$KUBEBUILDER_ASSETS/$name"
    if [[ -n "$src" && -x "$src" ]]; then
      ln -sf "$src" "$dir/$name"
    elif [[ "$name" == kube-controller-manager ]]; then
      # envtest bundles ship no controller-manager; fall back to the cache (built below if needed).
      :
    else
      log "error: $name not found (looked at \$$var and \$KUBEBUILDER_ASSETS)"; exit 1
    fi
  done
  if [[ -e "$dir/kube-controller-manager" ]] && ! $NODE; then echo "$dir"; exit 0; fi
  [[ -e "$dir/kube-controller-manager" ]] || log "no kube-controller-manager among the provided assets; using the built cache for it"
  PROVIDED_DIR=$dir
fi

K8S_CMDS="kube-apiserver kube-controller-manager kubectl"
$NODE && K8S_CMDS+=" kubelet kube-scheduler"
have_all() { for b in $K8S_CMDS etcd $($NODE && echo crictl); do [[ -x "$BIN_DIR/$b" ]] || return 1; done; }

if have_all; then
  log "reusing cached binaries in $BIN_DIR"
else
  command -v go >/dev/null || { log "error: Go is needed to build the control plane (or set KUBEBUILDER_ASSETS)"; exit 1; }
  mkdir -p "$BIN_DIR"
  SRC="$CACHE_ROOT/src-k8s-$K8S_VERSION"
  mkdir -p "$SRC/k8s" "$SRC/etcd"
  staging="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt
    kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
    mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller streaming"
  {
    echo "module pss-operator.io/k8s-binaries"
    echo
    echo "go 1.25"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    for m in $staging; do echo "replace k8s.io/$m => k8s.io/$m $STAGING_VERSION"; done
  } > "$SRC/k8s/go.mod"
  {
    printf 'package tools\n\nimport (\n'
    printf '\t_ "k8s.io/kubernetes/cmd/%s/app"\n' kube-apiserver kube-controller-manager kubelet kube-scheduler
    printf '\t_ "k8s.io/kubernetes/cmd/kubectl"\n)\n'
  } > "$SRC/k8s/tools.go"
  ldflags=""
  major=${K8S_VERSION#v}; major=${major%%.*}
  minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  export CGO_ENABLED=0 GOFLAGS=-mod=mod
  cd "$SRC/k8s"
  log "resolving k8s.io/kubernetes $K8S_VERSION modules (first run only)..."
  go mod tidy >&2 2>&1 || go mod download >&2
  for cmd in $K8S_CMDS; do
    if [[ -x "$BIN_DIR/$cmd" ]]; then log "$cmd already built"; continue; fi
    log "building $cmd $K8S_VERSION (a cold build takes many minutes on 2 cores)..."
    start=$(date +%s)
    go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN_DIR/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd" >&2
    mv "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
    log "built $cmd in $(( $(date +%s) - start ))s"
  done
  if [[ ! -x "$BIN_DIR/etcd" ]]; then
    cd "$SRC/etcd"
    printf 'module pss-operator.io/etcd-binary\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    printf 'package tools\n\nimport _ "go.etcd.io/etcd/server/v3/etcdmain"\n' > tools.go
    log "resolving etcd $ETCD_VERSION modules..."
    go mod tidy >&2 2>&1
    log "building etcd $ETCD_VERSION..."
    start=$(date +%s)
    go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
    log "built etcd in $(( $(date +%s) - start ))s"
  fi
  if $NODE && [[ ! -x "$BIN_DIR/crictl" ]]; then
    log "building crictl $CRICTL_VERSION (sigs.k8s.io/cri-tools)..."
    start=$(date +%s)
    rm -rf "$BIN_DIR/.crictl"
    GOBIN="$BIN_DIR/.crictl" GOFLAGS='' go install -trimpath \
      -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
      "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" >&2
    mv "$BIN_DIR/.crictl/crictl" "$BIN_DIR/crictl"
    rmdir "$BIN_DIR/.crictl"
    log "built crictl in $(( $(date +%s) - start ))s"
  fi
fi

if [[ -n "${PROVIDED_DIR:-}" ]]; then
  for b in kube-controller-manager $($NODE && echo kubelet kube-scheduler crictl); do
    [[ -e "$PROVIDED_DIR/$b" ]] || ln -sf "$BIN_DIR/$b" "$PROVIDED_DIR/$b"
  done
  echo "$PROVIDED_DIR"
else
  echo "$BIN_DIR"
fi

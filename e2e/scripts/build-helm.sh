#!/usr/bin/env bash
# Provides helm for the chart tests (`make test-chart`: helm lint --strict, helm template compared
# with kubectl kustomize config/default) and the in-cluster e2e (`make e2e-node`: helm install).
#
# Built once with Go from the Go module proxy (helm.sh/helm/v3/cmd/helm at $HELM_VERSION,
# CGO_ENABLED=0) into a version-keyed folder of the cache, and reused by every later run:
#   ${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/pss-operator}/helm-$HELM_VERSION/bin
# Prints that folder on its last line of stdout; progress goes to stderr.
#   --print-dir  only print the folder (nothing is built; used by the Makefile to name the tool)
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.21.4}
CACHE_ROOT=${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pss-operator}
BIN_DIR="$CACHE_ROOT/helm-$HELM_VERSION/bin"

log() { printf '[build-helm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ "${1:-}" == --print-dir ]]; then echo "$BIN_DIR"; exit 0; fi
[[ $# -eq 0 ]] || die "usage: $0 [--print-dir]"
[[ "$HELM_VERSION" =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "HELM_VERSION must look like v3.N.M, not $HELM_VERSION"

if [[ -x "$BIN_DIR/helm" ]]; then
  log "reusing cached helm $HELM_VERSION in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || die "Go is needed to build helm (https://go.dev/doc/install), or set HELM=/path/to/helm"
mkdir -p "$BIN_DIR"
# Two make runs at once build it once: the second waits here, then finds it built.
if command -v flock >/dev/null; then
  exec 9>"$BIN_DIR/../.lock"
  flock 9
  if [[ -x "$BIN_DIR/helm" ]]; then echo "$BIN_DIR"; exit 0; fi
fi

tmp="$BIN_DIR/.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
log "building helm $HELM_VERSION from the Go module proxy (a cold build takes a few minutes on 2 cores)..."
start=$(date +%s)
# helm's version, and the Kubernetes version `helm template` and `helm lint` assume, come from
# ldflags in its own Makefile (the latter from its k8s.io/client-go v0.N.M: Kubernetes 1.N); set
# them the same way, else charts with a kubeVersion are checked against Kubernetes 1.20.
gomod=$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f "$gomod" ]] || die "cannot read helm $HELM_VERSION's go.mod from the Go module proxy"
client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")
[[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || die "no k8s.io/client-go version in $gomod"
k8s_minor=${BASH_REMATCH[1]}
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
"$tmp/helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" || die "$tmp/helm version does not say $HELM_VERSION"
mv "$tmp/helm" "$BIN_DIR/"
rmdir "$tmp"
log "built helm $HELM_VERSION (Kubernetes 1.$k8s_minor by default) in $(($(date +%s) - start))s: $BIN_DIR"
echo "$BIN_DIR"

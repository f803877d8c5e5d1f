#!/usr/bin/env bash
# Provides promtool and prometheus for `make test-observability` (rule tests, query parsing, the
# end-to-end run with a real Prometheus).
#
# Built once with Go from the Go module proxy (github.com/prometheus/prometheus/cmd/{prometheus,
# promtool} at the module version of Prometheus $PROMETHEUS_VERSION, CGO_ENABLED=0, no UI assets:
# only the HTTP API is used) into a version-keyed folder of the cache, and reused by every later run:
#   ${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/pss-operator}/prometheus-$PROMETHEUS_VERSION/bin
# Prints that folder on its last line of stdout; progress goes to stderr.
#   --print-dir  only print the folder (nothing is built; used by the Makefile to name the tools)
set -euo pipefail

PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-3.16.0}
CACHE_ROOT=${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pss-operator}
BIN_DIR="$CACHE_ROOT/prometheus-$PROMETHEUS_VERSION/bin"

log() { printf '[build-prometheus] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ "${1:-}" == --print-dir ]]; then echo "$BIN_DIR"; exit 0; fi
[[ $# -eq 0 ]] || die "usage: $0 [--print-dir]"

# Prometheus 3.A.B is published as the Go module version v0.(300+A).B.
[[ "$PROMETHEUS_VERSION" =~ ^3\.([0-9]+)\.([0-9]+)$ ]] || die "PROMETHEUS_VERSION must look like 3.N.M, not $PROMETHEUS_VERSION"
MODULE_VERSION="v0.$((300 + BASH_REMATCH[1])).${BASH_REMATCH[2]}"

have_all() { [[ -x "$BIN_DIR/prometheus" && -x "$BIN_DIR/promtool" ]]; }

if have_all; then
  log "reusing cached promtool and prometheus $PROMETHEUS_VERSION in $BIN_DIR"
  echo "$BIN_DIR"
  exit 0
fi

command -v go >/dev/null || die "Go is needed to build promtool and prometheus (https://go.dev/doc/install), or set PROMTOOL and PROMETHEUS_BIN"
mkdir -p "$BIN_DIR"
# Two make runs at once build it once: the second waits here, then finds it built.
if command -v flock >/dev/null; then
  exec 9>"$BIN_DIR/../.lock"
  flock 9
  if have_all; then echo "$BIN_DIR"; exit 0; fi
fi

pkg=github.com/prometheus/common/version
ldflags="-s -w -X $pkg.Version=$PROMETHEUS_VERSION -X $pkg.Revision=$MODULE_VERSION -X $pkg.Branch=module-proxy"
ldflags+=" -X $pkg.BuildUser=pss-operator -X $pkg.BuildDate=19700101-00:00:00"
tmp="$BIN_DIR/.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
log "building promtool and prometheus $PROMETHEUS_VERSION (github.com/prometheus/prometheus $MODULE_VERSION)" \
  "from the Go module proxy; a cold build takes 10-12 min on 2 cores..."
start=$(date +%s)
# `go install module@version` builds with Prometheus' own go.mod (its pinned dependencies), outside
# any module of ours; a Go older than that go.mod asks for fetches the newer toolchain (GOTOOLCHAIN=auto).
GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -tags netgo -ldflags "$ldflags" \
  "github.com/prometheus/prometheus/cmd/promtool@$MODULE_VERSION" \
  "github.com/prometheus/prometheus/cmd/prometheus@$MODULE_VERSION" >&2
for b in promtool prometheus; do
  "$tmp/$b" --version 2>&1 | grep -q "version $PROMETHEUS_VERSION " || die "$tmp/$b --version does not say $PROMETHEUS_VERSION"
done
mv "$tmp/promtool" "$tmp/prometheus" "$BIN_DIR/"
rmdir "$tmp"
log "built promtool and prometheus $PROMETHEUS_VERSION in $(($(date +%s) - start))s: $BIN_DIR"
echo "$BIN_DIR"

#!/usr/bin/env bash
# Checks, in a second or two, what `make test` / `make demo` need from the system and cannot
# provide themselves (everything else is built or installed into the cache by `make tools`).
# Prints one line per missing thing, with the command that installs it, and exits 1; prints one
# summary line and exits 0 when all is there.
#   preflight.sh test   Rust (cargo, rustfmt, clippy), a C toolchain, Go, openssl, python3 with venv, node/npm
#   preflight.sh demo   Rust (cargo), a C toolchain, Go, openssl, python3, curl
set -uo pipefail

what=${1:-test}
[[ "$what" == test || "$what" == demo ]] || { echo "usage: $0 test|demo" >&2; exit 2; }
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo "
apt="${sudo}apt-get install -y"
missing=0
miss() { printf 'preflight: missing %s -> %s\n' "$1" "$2" >&2; missing=$((missing + 1)); }

# version_ge 1.26.1 1.21: is the first dotted version at least the second?
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]; }

# Rust: cargo builds and tests everything; fmt and clippy are `make lint`.
if ! command -v cargo >/dev/null; then
  miss "cargo (Rust)" "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y, then open a new shell"
elif [[ "$what" == test ]]; then
  cargo fmt --version >/dev/null 2>&1 || miss "rustfmt (make lint)" "rustup component add rustfmt"
  cargo clippy --version >/dev/null 2>&1 || miss "clippy (make lint)" "rustup component add clippy"
fi

# A C compiler and libc headers: cargo links with cc, and the `ring` crate compiles C.
cc_bin=${CC:-cc}
if ! command -v "$cc_bin" >/dev/null; then
  miss "a C compiler ($cc_bin: cargo links with it and builds the ring crate)" "$apt gcc libc6-dev"
else
  probe=$(mktemp -d)
  if ! printf '#include <stdio.h>\nint main(void) { return 0; }\n' >"$probe/t.c" ||
     ! "$cc_bin" "$probe/t.c" -o "$probe/t" >/dev/null 2>&1; then
    miss "a working C toolchain ($cc_bin cannot compile and link a hello-world)" "$apt gcc libc6-dev"
  fi
  rm -rf "$probe"
fi

# Go builds the control plane, promtool/prometheus and the CRD check; 1.21+ fetches the exact
# toolchain a module asks for by itself. Debian's golang package is too old.
if ! command -v go >/dev/null; then
  miss "go (builds kube-apiserver, etcd, prometheus from the Go module proxy)" "install Go >= 1.21 from https://go.dev/doc/install"
else
  gov=$(go env GOVERSION 2>/dev/null); gov=${gov#go}
  version_ge "${gov:-0}" 1.21 || miss "go >= 1.21 (found ${gov:-an unknown version})" "install a current Go from https://go.dev/doc/install"
fi

command -v openssl >/dev/null || miss "openssl (the local control plane's certificates, e2e/scripts/cluster-up.sh)" "$apt openssl"

if ! command -v python3 >/dev/null; then
  miss "python3" "$apt python3 python3-venv"
elif ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
  miss "python3 >= 3.9 (found $(python3 -V 2>&1))" "$apt python3 python3-venv"
elif [[ "$what" == test ]] && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  miss "python3's venv/ensurepip (the Python environment for config/observability)" "$apt python3-venv"
fi

if [[ "$what" == test ]]; then
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    miss "node and npm (the Grafana dashboard's schema check)" "$apt nodejs npm"
  else
    nodev=$(node --version 2>/dev/null); nodev=${nodev#v}
    version_ge "${nodev:-0}" 16.20 || miss "node >= 16.20 (found ${nodev:-an unknown version})" "install a current Node.js from https://nodejs.org"
  fi
else
  command -v curl >/dev/null || miss "curl (the demo reads the operator's /metrics)" "$apt curl"
fi

((missing == 0)) || exit 1
echo "preflight: the system has what make $what needs (cargo, cc, go, openssl, python3$([[ $what == test ]] && echo ', node/npm' || echo ', curl'))" >&2

#!/usr/bin/env bash
# Provides a Python virtual environment with the packages the repository's Python scripts import
# (requirements.txt at the top of the repository: PyYAML for config/observability; e2e/bench needs
# only the standard library). Nothing is installed into the system's or the user's Python.
#
# Created once per (requirements.txt, python3) into the cache and reused by every later run:
#   ${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/pss-operator}/python-X.Y.Z-<hash>
# where <hash> covers requirements.txt and the interpreter, so editing the file or upgrading
# python3 makes a new one. Prints the environment's bin folder on its last line of stdout; progress
# goes to stderr.
#   --print-dir  only print that folder (nothing is created; used by the Makefile to name $PYTHON)
# Environment: PSS_PYTHON (the interpreter to build on, default python3).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REQUIREMENTS="$REPO/requirements.txt"
PY=${PSS_PYTHON:-python3}
CACHE_ROOT=${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pss-operator}

log() { printf '[python-env] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# "3.11.7 /usr/bin/python3.11": the version and the real interpreter the environment links to.
py_id=$("$PY" -c 'import os, platform, sys; print(platform.python_version(), os.path.realpath(sys.executable))' 2>/dev/null) ||
  py_id="missing $PY"
key=$({ printf '%s\n' "$py_id"; cat "$REQUIREMENTS"; } | sha256sum | cut -c1-12)
ENV_DIR="$CACHE_ROOT/python-${py_id%% *}-$key"

if [[ "${1:-}" == --print-dir ]]; then echo "$ENV_DIR/bin"; exit 0; fi
[[ $# -eq 0 ]] || die "usage: $0 [--print-dir]"

# .complete is written last: a folder without it is a run that was interrupted, and is redone.
if [[ -f "$ENV_DIR/.complete" ]]; then
  log "reusing $ENV_DIR"
  echo "$ENV_DIR/bin"
  exit 0
fi

[[ "$py_id" != missing* ]] || die "$PY not found: sudo apt-get install -y python3 python3-venv"
mkdir -p "$CACHE_ROOT"
if command -v flock >/dev/null; then
  exec 9>"$ENV_DIR.lock"
  flock 9
  if [[ -f "$ENV_DIR/.complete" ]]; then echo "$ENV_DIR/bin"; exit 0; fi
fi

start=$(date +%s)
log "creating $ENV_DIR (python ${py_id%% *}, $REQUIREMENTS)..."
rm -rf "$ENV_DIR"
"$PY" -m venv "$ENV_DIR" >&2 ||
  die "$PY -m venv failed (Debian/Ubuntu: sudo apt-get install -y python3-venv)"
"$ENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS" >&2 ||
  die "pip install -r $REQUIREMENTS failed (it needs PyPI or a PIP_INDEX_URL mirror)"
"$ENV_DIR/bin/python" -m pip freeze --disable-pip-version-check >"$ENV_DIR/installed.txt"
touch "$ENV_DIR/.complete"
log "created in $(($(date +%s) - start))s: $(tr '\n' ' ' <"$ENV_DIR/installed.txt")"
echo "$ENV_DIR/bin"

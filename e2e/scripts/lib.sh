# Shared by cluster-up.sh, cluster-down.sh and demo.sh. Sourced, not executed.
# shellcheck shell=bash

E2E_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_DIR=$(dirname "$E2E_SCRIPTS")

# The state folder (certificates, etcd data, logs, pid files, kubeconfig). PSS_CLUSTER_DIR lets a
# second, private control plane (the Rust e2e harness) run beside the developer's one.
CLUSTER_DIR=$(realpath -m "${PSS_CLUSTER_DIR:-$E2E_DIR/.cluster}")
# Written by cluster-up.sh; cluster-down.sh only deletes a folder holding it, so a mistyped
# PSS_CLUSTER_DIR=$HOME can never be wiped.
# shellcheck disable=SC2034 # used by the scripts that source this file
CLUSTER_MARKER="$CLUSTER_DIR/.pss-cluster"
# shellcheck disable=SC2034 # used by cluster-up.sh
COMPONENTS=(etcd kube-apiserver kube-controller-manager)

log() { printf '[%s] %s\n' "${LOG_PREFIX:-cluster}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# pid of a component we started, or nothing when its pid file is missing or the pid now belongs to
# some other process (a crashed run's pid reused): our processes all carry CLUSTER_DIR in argv.
component_pid() {
  local pidfile="$CLUSTER_DIR/pids/$1.pid" pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(<"$pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$CLUSTER_DIR"; then
    echo "$pid"
  fi
}

# Every component is started with setsid, so its pid is its process group: killing the group
# also takes down anything it forked. SIGTERM to all of them at once, SIGKILL for whatever still
# runs after 10 s.
stop_groups() { # NAME=PID...
  local entry name pid i alive
  for entry in "$@"; do
    name=${entry%%=*} pid=${entry#*=}
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = 0; i < 100; i++)); do
    alive=0
    for entry in "$@"; do kill -0 "${entry#*=}" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for entry in "$@"; do
    name=${entry%%=*} pid=${entry#*=}
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within 10s; sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# Stops every component this state folder records: the API clients first, etcd last
# (kube-apiserver hangs in shutdown when etcd is already gone).
stop_components() {
  local stage name pid running
  # A node (NODE=1) goes first: its Pods, kubelet, containerd and what they made on the machine.
  if [[ -d "$CLUSTER_DIR/node" ]]; then
    PSS_CLUSTER_DIR="$CLUSTER_DIR" "$E2E_SCRIPTS/node.sh" down || log "node.sh down failed"
  fi
  for stage in "kube-controller-manager kube-apiserver" etcd; do
    running=()
    for name in $stage; do
      pid=$(component_pid "$name")
      [[ -n "$pid" ]] && running+=("$name=$pid")
      rm -f "$CLUSTER_DIR/pids/$name.pid"
    done
    ((${#running[@]} == 0)) || stop_groups "${running[@]}"
  done
}

# Prints the last lines of a component's log, for error messages.
show_log_tail() {
  local name=$1 file="$CLUSTER_DIR/logs/$1.log"
  if [[ -s "$file" ]]; then
    log "last 25 lines of $file:"
    tail -n 25 "$file" | sed 's/^/    /' >&2
  else
    log "$file is empty or missing"
  fi
}

# For the demos: use the cluster KUBECONFIG points at, or start the local control plane. Sets
# KUBECONFIG, kubectl_bin, local_cluster and a kubectl function; needs E2E_SCRIPTS, CLUSTER_DIR
# and a `say` function from the caller.
# shellcheck disable=SC2034,SC2317 # local_cluster and kubectl are for the calling script
connect_cluster() {
  local_cluster=false
  if [[ -n "${KUBECONFIG:-}" ]]; then
    kubectl_bin=${KUBECTL:-$(command -v kubectl || true)}
    [[ -n "$kubectl_bin" ]] || kubectl_bin="$("$E2E_SCRIPTS/build-binaries.sh" | tail -n 1)/kubectl"
    say "Using the cluster from KUBECONFIG=$KUBECONFIG"
  else
    say "Starting the local control plane (etcd + kube-apiserver + kube-controller-manager on 127.0.0.1)"
    KUBECONFIG=$("$E2E_SCRIPTS/cluster-up.sh" | tail -n 1)
    export KUBECONFIG
    kubectl_bin=${KUBECTL:-$CLUSTER_DIR/bin/kubectl}
    local_cluster=true
  fi
  kubectl() { "$kubectl_bin" "$@"; }
}

#!/usr/bin/env bash
# Stops every process cluster-up.sh started for a state folder and removes that folder.
#
# Usage: cluster-down.sh [--wait-for PID] [STATE_DIR]
#   STATE_DIR      defaults to $PSS_CLUSTER_DIR, else e2e/.cluster
#   --wait-for PID first wait until process PID exits (the watchdog mode cluster-up.sh uses when
#                  PSS_CLUSTER_OWNER_PID is set)
set -euo pipefail

wait_for_pid=""
if [[ "${1:-}" == --wait-for ]]; then
  wait_for_pid=${2:?--wait-for needs a pid}
  shift 2
fi
if [[ -n "${1:-}" ]]; then export PSS_CLUSTER_DIR=$1; fi

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_PREFIX=cluster-down

if [[ -n "$wait_for_pid" ]]; then
  log "watching process $wait_for_pid; the control plane in $CLUSTER_DIR stops when it exits"
  while kill -0 "$wait_for_pid" 2>/dev/null; do sleep 1; done
  log "process $wait_for_pid exited"
fi

if [[ ! -d "$CLUSTER_DIR" ]]; then
  log "nothing to stop: $CLUSTER_DIR does not exist"
  exit 0
fi
if [[ ! -e "$CLUSTER_MARKER" ]]; then
  log "error: $CLUSTER_DIR was not created by cluster-up.sh (no $(basename "$CLUSTER_MARKER")); not touching it"
  exit 1
fi

stop_components
# The watchdog is a cluster-down.sh too; when this *is* the watchdog, don't kill ourselves.
watchdog=$(component_pid watchdog)
if [[ -n "$watchdog" && "$watchdog" != "$$" ]]; then stop_groups "watchdog=$watchdog"; fi

rm -rf -- "$CLUSTER_DIR"
log "removed $CLUSTER_DIR"

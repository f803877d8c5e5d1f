#!/bin/bash
# The operator's CPU for one watch event per Deployment: BIN started on a scale.py cluster
# (CLUSTER_DIR), settled, then every Deployment annotated with VALUE (16 client threads).
set -euo pipefail
BIN=$1; VALUE=$2
D=${CLUSTER_DIR:?set CLUSTER_DIR to a cluster made by e2e/bench/scale.py}
LOG=$(mktemp /tmp/pss-ab-XXXXXX.log)
KUBECONFIG=$D/operator.kubeconfig RUST_LOG=info "$BIN" run --metrics-secure=false \
  --metrics-addr 127.0.0.1:0 --log-format json --operator-namespace pss-system >"$LOG" 2>&1 &
PID=$!
until grep -q "first pass complete" "$LOG"; do sleep 0.2; done
sleep 10
c0=$(awk '{print $14+$15}' /proc/$PID/stat)
python3 "$(dirname "$0")/touch_deployments.py" "$D" "$VALUE"
sleep 5
c1=$(awk '{print $14+$15}' /proc/$PID/stat)
kill $PID; wait $PID 2>/dev/null || true
echo "$(basename "$BIN") operator_cpu_s=$(python3 -c "print(($c1-$c0)/100)") load=$(cut -d' ' -f1 /proc/loadavg)"

#!/bin/bash
# One restart of BIN on a scale.py cluster (CLUSTER_DIR): seconds to the first complete pass, the
# operator's CPU and peak RSS by then. Run two binaries alternately to compare them:
#   for b in A B A B; do CLUSTER_DIR=/tmp/pss-bench-scale/curve e2e/bench/ab/restart.sh $b; done
set -euo pipefail
BIN=$1
D=${CLUSTER_DIR:?set CLUSTER_DIR to a cluster made by e2e/bench/scale.py}
LOG=$(mktemp /tmp/pss-ab-XXXXXX.log)
t0=$(date +%s.%N)
KUBECONFIG=$D/operator.kubeconfig RUST_LOG=info "$BIN" run --metrics-secure=false \
  --metrics-addr 127.0.0.1:0 --log-format json --operator-namespace pss-system >"$LOG" 2>&1 &
PID=$!
until grep -q "first pass complete" "$LOG"; do
  kill -0 $PID 2>/dev/null || { echo "operator exited; see $LOG" >&2; exit 1; }
  sleep 0.2
done
t1=$(date +%s.%N)
ticks=$(awk '{print $14+$15}' /proc/$PID/stat)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
kill $PID; wait $PID 2>/dev/null || true
python3 -c "print('$(basename "$BIN")', 'first_pass_s=%.2f' % ($t1-$t0), 'cpu_s=%.2f' % ($ticks/100), 'peak_rss_mb=%.1f' % ($hwm/1024), 'load=$(cut -d' ' -f1 /proc/loadavg)')"

#!/usr/bin/env bash
# The operator on a real control plane, with commentary (extends the seed replay of demo.sh):
#   a privileged Pod created in namespace `app` while nothing is enforced there;
#   the CRD installed, `pss-operator run` started in the background;
#   the sample profile `app` (config/samples) applied: the PSA labels appear on `app`;
#   a label removed by hand is put back, with a Warning Event;
#   the privileged Pod reported in the profile status and in /metrics;
#   the seed's privileged Deployment applied after enforcement: reported blocked, then fixed.
# The operator is stopped when the script exits; the cluster is left running.
#
# Uses the cluster KUBECONFIG points at when it is set; otherwise starts (or reuses) the local control
# plane of `make cluster-up`.
#
# Environment: KUBECONFIG, KUBECTL (kubectl binary), PSS_OPERATOR_BIN (default: built with cargo),
# PSS_DEMO_NAMESPACE (default: app; the sample profile selects `app`, so another name gets a copy of
# the sample selecting it).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_PREFIX=demo-operator
REPO=$(dirname "$E2E_DIR")
NS=${PSS_DEMO_NAMESPACE:-app}
DEMO_LABEL_KEY=app.kubernetes.io/managed-by
DEMO_LABEL_VALUE=pss-operator-demo
HANG_GUARD=120
ENFORCE=pod-security.kubernetes.io/enforce

if [[ -t 1 ]]; then bold=$'\e[1m' dim=$'\e[2m' reset=$'\e[0m'; else bold="" dim="" reset=""; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s%s%s\n' "$dim" "$*" "$reset"; }
run() { printf '%s$ %s%s\n' "$bold" "$*" "$reset"; "$@"; }
# until_ok DESCRIPTION COMMAND...: retries COMMAND until it succeeds (HANG_GUARD seconds at most).
until_ok() {
  local what=$1 started
  shift
  started=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) - started < HANG_GUARD)) || die "$what: not within ${HANG_GUARD}s (operator log: $op_log)"
    sleep 0.2
  done
}

connect_cluster

if [[ -n "${PSS_OPERATOR_BIN:-}" ]]; then
  operator_bin=$PSS_OPERATOR_BIN
else
  log "building pss-operator (cargo build --bin pss-operator)"
  (cd "$REPO" && ${CARGO:-cargo} build --quiet --bin pss-operator)
  operator_bin=${CARGO_TARGET_DIR:-$REPO/target}/debug/pss-operator
fi
[[ -x "$operator_bin" ]] || die "no pss-operator binary at $operator_bin"

# ---- the operator, stopped on exit ----------------------------------------------------------------
op_dir=$(mktemp -d "${TMPDIR:-/tmp}/pss-demo-operator-XXXXXX")
op_log=$op_dir/operator.log
op_pid=""
stop_operator() {
  if [[ -n "$op_pid" ]] && kill -0 "$op_pid" 2>/dev/null; then
    kill -TERM "$op_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$op_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$op_pid" 2>/dev/null || true
    note "pss-operator stopped (its log: $op_log)"
  fi
}
trap stop_operator EXIT

port=""
for _ in $(seq 200); do
  p=$((20000 + RANDOM % 12000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[[ -n "$port" ]] || die "no free loopback port"
metrics="http://127.0.0.1:$port"

# ---- the namespace, with a privileged Pod created before any enforcement -------------------------
if kubectl get namespace "$NS" >/dev/null 2>&1; then
  owner=$(kubectl get namespace "$NS" -o jsonpath="{.metadata.labels.${DEMO_LABEL_KEY//./\\.}}")
  [[ "$owner" == "$DEMO_LABEL_VALUE" ]] ||
    die "namespace $NS already exists and was not created by a demo; set PSS_DEMO_NAMESPACE to another name"
  note "namespace $NS is left over from an earlier demo run; deleting it first"
  kubectl delete namespace "$NS" --wait=true --timeout="${HANG_GUARD}s" >/dev/null
fi

say "1. Namespace $NS without any Pod Security label, and a privileged Pod in it"
run kubectl create namespace "$NS"
kubectl label namespace "$NS" "$DEMO_LABEL_KEY=$DEMO_LABEL_VALUE" >/dev/null
until_ok "ServiceAccount $NS/default" kubectl -n "$NS" get serviceaccount default
note "Nothing is enforced, so the seed's privileged nginx is admitted without a word:"
cat <<EOF | run kubectl apply -f -
apiVersion: v1
kind: Pod
metadata:
  name: legacy-nginx
  namespace: $NS
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    securityContext:
      privileged: true
EOF

say "2. The PodSecurityProfile CRD (make install) and the operator"
run kubectl apply --server-side --force-conflicts -f "$REPO/crds/podsecurityprofiles.yaml"
kubectl wait --for=condition=Established --timeout="${HANG_GUARD}s" crd/podsecurityprofiles.pss-operator.io >/dev/null
# Plain local metrics (--metrics-secure=false): a laptop demo; in a cluster /metrics is HTTPS for
# authorized readers only (README, "Metrics security").
printf '%s$ %s%s\n' "$bold" "$operator_bin run --metrics-secure=false --metrics-addr 127.0.0.1:$port > $op_log 2>&1 &" "$reset"
NO_COLOR=1 "$operator_bin" run --metrics-secure=false --metrics-addr "127.0.0.1:$port" >"$op_log" 2>&1 &
op_pid=$!
until_ok "pss-operator ready on $metrics/readyz" curl -fsS "$metrics/readyz"
note "pss-operator (pid $op_pid) is ready: $metrics/readyz answers $(curl -fsS "$metrics/readyz")"

say "3. A profile selecting namespace $NS (config/samples/podsecurityprofile_app.yaml)"
profile_manifest() {
  if [[ "$NS" == app ]]; then
    cat "$REPO/config/samples/podsecurityprofile_app.yaml"
  else
    sed "s/^  name: app\$/  name: $NS/; s/values: \[app\]/values: [$NS]/" "$REPO/config/samples/podsecurityprofile_app.yaml"
  fi
}
profile_manifest | grep -v '^#'
profile_manifest | run kubectl apply -f -
started=$(date +%s)
until [[ -n "$(kubectl get namespace "$NS" -o jsonpath="{.metadata.labels.pod-security\.kubernetes\.io/enforce}")" ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "no labels on $NS within ${HANG_GUARD}s (operator log: $op_log)"
  sleep 0.2
done
note "The labels appeared (server-side apply, field manager pss-operator):"
show_labels() {
  # shellcheck disable=SC2016 # a Go template, not shell
  run kubectl get namespace "$NS" -o go-template='{{range $k, $v := .metadata.labels}}{{$k}}={{$v}}{{"\n"}}{{end}}'
}
show_labels
run kubectl -n "$NS" get events --field-selector reason=LabelsApplied -o 'custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message'

say "4. Someone removes the enforce label by hand"
run kubectl label namespace "$NS" "$ENFORCE-"
started=$(date +%s)
until [[ "$(kubectl get namespace "$NS" -o jsonpath="{.metadata.labels.pod-security\.kubernetes\.io/enforce}")" == baseline ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "the label was not restored within ${HANG_GUARD}s (operator log: $op_log)"
  sleep 0.1
done
note "... and the operator has put it back:"
show_labels
started=$(date +%s)
until [[ -n "$(kubectl -n "$NS" get events --field-selector reason=LabelDriftRepaired -o name)" ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "no LabelDriftRepaired event within ${HANG_GUARD}s"
  sleep 0.2
done
run kubectl -n "$NS" get events --field-selector reason=LabelDriftRepaired -o 'custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message'

say "5. The privileged Pod created before enforcement, in the profile status and in /metrics"
profile=$NS
started=$(date +%s)
until [[ "$(kubectl get podsecurityprofile "$profile" -o jsonpath='{.status.enforce.violatingPods}')" == 1 &&
  "$(kubectl get podsecurityprofile "$profile" -o jsonpath='{.status.driftCorrections}')" -ge 1 ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "the profile status did not report the Pod within ${HANG_GUARD}s"
  sleep 0.2
done
run kubectl get podsecurityprofile "$profile"
note "status.enforce (the exact message kube-apiserver would answer for that Pod now):"
kubectl get podsecurityprofile "$profile" -o jsonpath='{.status.enforce}' | python3 -m json.tool
note "status.driftCorrections: $(kubectl get podsecurityprofile "$profile" -o jsonpath='{.status.driftCorrections}')"
printf '%s$ %s%s\n' "$bold" "curl -s $metrics/metrics | grep namespace=\"$NS\"" "$reset"
curl -fsS "$metrics/metrics" | grep -E "^pss_(privileged_containers|violating_pods|pod_violations|label_drift_total|namespace_level|blocked_workloads|violating_workloads)\{" | grep "namespace=\"$NS\"" || true
note "A new privileged Pod is now rejected by enforce=baseline:"
printf '%s$ %s%s\n' "$bold" "kubectl -n $NS run again --image=nginx:1.27 --privileged" "$reset"
kubectl -n "$NS" run again --image=nginx:1.27 --privileged 2>&1 | sed 's/^/  /' || true

say "6. The seed's Deployment, applied now that $NS enforces baseline: blocked"
note "kube-apiserver only warns on the Deployment; its ReplicaSet's Pods are refused (FailedCreate), the app is down:"
seed_deployment() {
  cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  namespace: $NS
spec:
  replicas: 1
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        securityContext:
          privileged: $1
EOF
}
seed_deployment true | run kubectl apply -f -
started=$(date +%s)
until [[ "$(kubectl get podsecurityprofile "$profile" -o jsonpath='{.status.blockedWorkloads}')" == 1 ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "the Deployment was not reported blocked within ${HANG_GUARD}s"
  sleep 0.2
done
note "... and the operator reports it blocked (the BLOCKED column), with kube-apiserver's own words:"
run kubectl get podsecurityprofile "$profile"
kubectl get podsecurityprofile "$profile" -o jsonpath='{.status.enforce.workloadSamples}' | python3 -m json.tool
until [[ -n "$(kubectl -n "$NS" get events --field-selector reason=PodSecurityBlocked -o name)" ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "no PodSecurityBlocked event within ${HANG_GUARD}s"
  sleep 0.2
done
run kubectl -n "$NS" get events --field-selector reason=PodSecurityBlocked -o 'custom-columns=OBJECT:.involvedObject.kind,NAME:.involvedObject.name,MESSAGE:.message'
note "The fix: privileged: false. The Deployment is no longer blocked:"
seed_deployment false | run kubectl apply -f -
started=$(date +%s)
until [[ "$(kubectl get podsecurityprofile "$profile" -o jsonpath='{.status.blockedWorkloads}')" == 0 ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "the Deployment was still blocked after ${HANG_GUARD}s"
  sleep 0.2
done
run kubectl get podsecurityprofile "$profile"

say "Done"
echo "The operator stops with this script; the profile, namespace $NS and its labels stay."
echo "Explore the cluster (run the operator again with: $operator_bin run --metrics-secure=false --metrics-addr 127.0.0.1:8080):"
echo "  export KUBECONFIG=$KUBECONFIG"
if $local_cluster; then
  echo "  ${kubectl_bin} get podsecurityprofiles"
  echo "Tear it down with: make cluster-down"
else
  echo "Remove what the demo made with: kubectl delete podsecurityprofile $profile; kubectl delete namespace $NS"
fi

#!/usr/bin/env bash
# Replays the seed article on a real control plane, with commentary:
#   namespace `app` labelled enforce=baseline, audit=restricted, warn=restricted;
#   a privileged nginx Deployment applied -> kubectl prints the restricted warning, the Deployment
#   exists, but PodSecurity rejects every Pod its ReplicaSet tries to create (FailedCreate);
#   the same Deployment with privileged: false -> the Pod is created.
#
# Uses the cluster KUBECONFIG points at when it is set; otherwise starts (or reuses) the local control
# plane of `make cluster-up` and leaves it running for exploration.
#
# Environment: KUBECONFIG, KUBECTL (kubectl binary to use), PSS_DEMO_NAMESPACE (default: app).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_PREFIX=demo
REPO=$(dirname "$E2E_DIR")
SEED="$REPO/examples/seed"
NS=${PSS_DEMO_NAMESPACE:-app}
DEMO_LABEL_KEY=app.kubernetes.io/managed-by
DEMO_LABEL_VALUE=pss-operator-demo
HANG_GUARD=120

if [[ -t 1 ]]; then bold=$'\e[1m' dim=$'\e[2m' reset=$'\e[0m'; else bold="" dim="" reset=""; fi
say() { printf '\n%s== %s%s\n' "$bold" "$*" "$reset"; }
note() { printf '%s%s%s\n' "$dim" "$*" "$reset"; }
# Shows a command, then runs it.
run() { printf '%s$ %s%s\n' "$bold" "$*" "$reset"; "$@"; }

connect_cluster
note "kubectl: $kubectl_bin ($(kubectl version --client -o json 2>/dev/null | grep -m1 gitVersion | tr -d ' ",' || echo unknown))"
note "server:  $(kubectl get --raw /version | grep -m1 gitVersion | tr -d ' ",')"

# A namespace left by an earlier demo run is recreated; anything else with that name is not ours.
if kubectl get namespace "$NS" >/dev/null 2>&1; then
  owner=$(kubectl get namespace "$NS" -o jsonpath="{.metadata.labels.${DEMO_LABEL_KEY//./\\.}}")
  if [[ "$owner" == "$DEMO_LABEL_VALUE" ]]; then
    note "namespace $NS is left over from an earlier demo run; deleting it first"
    kubectl delete namespace "$NS" --wait=true --timeout="${HANG_GUARD}s" >/dev/null
  else
    die "namespace $NS already exists and was not created by this demo; set PSS_DEMO_NAMESPACE to another name"
  fi
fi
# The seed manifests name namespace `app`; move them to $NS.
ns_manifest() { sed "s/^  name: app\$/  name: $NS/" "$SEED/namespace-app.yaml"; }
deployment_manifest() { sed "s/^  namespace: app\$/  namespace: $NS/; s/privileged: true/privileged: $1/" "$SEED/deployment-privileged.yaml"; }

say "1. A namespace with Pod Security Admission labels (examples/seed/namespace-app.yaml)"
ns_manifest
note "enforce=baseline rejects Pods that break baseline; audit and warn report what breaks restricted."
ns_manifest | run kubectl apply -f -
kubectl label namespace "$NS" "$DEMO_LABEL_KEY=$DEMO_LABEL_VALUE" >/dev/null
# Until kube-controller-manager creates ServiceAccount default, Pods are rejected for lacking it,
# and a ReplicaSet would show that as its first (sticky) FailedCreate message.
started=$(date +%s)
until kubectl -n "$NS" get serviceaccount default >/dev/null 2>&1; do
  (($(date +%s) - started < HANG_GUARD)) || die "ServiceAccount $NS/default was not created within ${HANG_GUARD}s"
  sleep 0.2
done

say "2. A privileged nginx Deployment (examples/seed/deployment-privileged.yaml)"
grep -n -B1 -A1 'privileged' "$SEED/deployment-privileged.yaml"
note "kubectl apply succeeds: PodSecurity checks Pods, not Deployments. warn=restricted prints what the"
note "Pod template breaks (the exact text the article shows, examples/seed/expected-warning.txt):"
deployment_manifest true | run kubectl apply -f -

say "3. The Deployment exists, but no Pod is created"
note "kube-controller-manager creates a ReplicaSet, which tries to create the Pod; enforce=baseline rejects it."
started=$(date +%s)
until [[ -n "$(kubectl -n "$NS" get replicaset -l app.kubernetes.io/name=nginx \
  -o jsonpath='{.items[*].status.conditions[?(@.type=="ReplicaFailure")].message}' 2>/dev/null)" ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "the ReplicaSet reported no FailedCreate within ${HANG_GUARD}s; see $CLUSTER_DIR/logs"
  sleep 1
done
run kubectl -n "$NS" get deployment nginx
run kubectl -n "$NS" get pods
run kubectl -n "$NS" get replicaset -l app.kubernetes.io/name=nginx \
  -o 'custom-columns=REPLICASET:.metadata.name,CONDITION:.status.conditions[0].type,REASON:.status.conditions[0].reason'
note "The ReplicaSet's FailedCreate condition message:"
kubectl -n "$NS" get replicaset -l app.kubernetes.io/name=nginx \
  -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="ReplicaFailure")].message}{"\n"}{end}'
note "The same rejection as events (the controller retries with back-off):"
run kubectl -n "$NS" get events --field-selector reason=FailedCreate --sort-by=.lastTimestamp \
  -o 'custom-columns=LAST SEEN:.lastTimestamp,MESSAGE:.message'

say "4. The fix: privileged: false"
deployment_manifest false | run kubectl apply -f -
note "baseline is satisfied now, so the new ReplicaSet's Pod is admitted (restricted still warns)."
started=$(date +%s)
until [[ -n "$(kubectl -n "$NS" get pods -l app.kubernetes.io/name=nginx -o name 2>/dev/null)" ]]; do
  (($(date +%s) - started < HANG_GUARD)) || die "no Pod was created within ${HANG_GUARD}s; see $CLUSTER_DIR/logs"
  sleep 1
done
run kubectl -n "$NS" get pods -o wide
if $local_cluster; then
  note "The Pod stays Pending: this local control plane has no scheduler and no kubelet; admission is what we test."
fi

say "Done"
echo "Explore the cluster:"
echo "  export KUBECONFIG=$KUBECONFIG"
if $local_cluster; then
  echo "  ${kubectl_bin} -n $NS get all"
  echo "Tear it down with: make cluster-down"
else
  echo "Remove the demo namespace with: kubectl delete namespace $NS"
fi

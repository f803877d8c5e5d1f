#!/usr/bin/env bash
# `make e2e-node`: the operator as users run it, on a real node. Needs root (checked first).
#
#   1. the image (`make image`: static musl binary, the Dockerfile's last stage, OCI archive);
#   2. a private control plane with a node (cluster-up.sh, PSS_NODE=1: kubelet, containerd + runc,
#      kube-scheduler, CNI bridge), the image loaded into its containerd;
#   3. `make deploy` (kubectl apply -k config/default) into pss-system, which enforces restricted:
#      the API server admits the operator's Pods, they become Ready through their probes, the
#      processes run as 65532 on a read-only root with the in-cluster config, two replicas elect
#      one leader, the metrics answer from a Pod (pod network) and through the Service; the
#      operator labels a namespace, repairs drift, and counts a privileged container that really
#      runs; `make undeploy` leaves nothing behind;
#   4. the same with `helm install` / `helm uninstall` of charts/pss-operator;
#   5. cluster-down.sh: nothing of the node is left on the machine (processes, mounts, cgroups,
#      iptables chain, bridge).
# Ends with the line "N passed, N failed"; exits 1 when something failed or could not run.
#
# Environment: IMAGE_ARCHIVE and IMG (from make), HELM, PSS_CLUSTER_DIR (default a temporary
# folder), PSS_E2E_NODE_KEEP=1 keeps the cluster running at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCRIPTS="$ROOT/e2e/scripts"
IMG=${IMG:-pss-operator:latest}
: "${IMAGE_ARCHIVE:?IMAGE_ARCHIVE (the OCI archive make image writes) must be set}"
: "${HELM:?HELM must name helm}"
export PSS_CLUSTER_DIR=${PSS_CLUSTER_DIR:-$(mktemp -u /tmp/pss-e2e-node.XXXXXX)}
NS=pss-system
started=$(date +%s)

say() { printf '\n[e2e-node %3ss] %s\n' "$(($(date +%s) - started))" "$*"; }
passed=0
failed=0
failures=()
ok() { passed=$((passed + 1)); printf '  ok    %s\n' "$1"; }
bad() { failed=$((failed + 1)); failures+=("$1"); printf '  FAIL  %s\n' "$1"; }
# check NAME COMMAND...: one test
check() {
  local name=$1
  shift
  if out=$("$@" 2>&1); then ok "$name"; else bad "$name"; printf '%s\n' "$out" | tail -n 15 | sed 's/^/        /'; fi
}
# eventually SECONDS COMMAND...: retried every second until it succeeds
eventually() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@"; do
    (($(date +%s) < deadline)) || return 1
    sleep 1
  done
}
finish() {
  local rc=$?
  if [[ "${PSS_E2E_NODE_KEEP:-}" == 1 ]]; then
    say "kept running: export KUBECONFIG=$PSS_CLUSTER_DIR/kubeconfig; $SCRIPTS/cluster-down.sh $PSS_CLUSTER_DIR stops it"
  elif [[ -e "$PSS_CLUSTER_DIR/.pss-cluster" ]]; then
    say "cluster-down"
    "$SCRIPTS/cluster-down.sh" "$PSS_CLUSTER_DIR" >/dev/null 2>&1 || bad "cluster-down.sh failed"
    # The node's state folder is gone, so look for anything it left by name.
    if left=$(PSS_CLUSTER_DIR="$PSS_CLUSTER_DIR" "$SCRIPTS/node.sh" leftovers 2>&1); then
      ok "cluster-down leaves nothing of the node (processes, mounts, cgroups, iptables chain, bridge)"
    else
      bad "cluster-down left: $left"
    fi
  fi
  [[ -n "${completed:-}" ]] || bad "the run stopped early (exit $rc) after $((passed + failed)) checks"
  ((rc != 0)) || [[ -n "${completed:-}" ]] || rc=1
  echo
  for f in "${failures[@]}"; do echo "failed: $f"; done
  echo "e2e-node ($(($(date +%s) - started)) s):"
  echo "$passed passed, $failed failed"
  ((failed == 0)) || exit 1
  exit "$rc"
}
trap finish EXIT

"$SCRIPTS/node.sh" preflight || { bad "node preflight (see above)"; exit 1; }
[[ -s "$IMAGE_ARCHIVE" ]] || { bad "no image archive at $IMAGE_ARCHIVE (make image)"; exit 1; }

say "control plane + node in $PSS_CLUSTER_DIR"
t0=$(date +%s)
KUBECONFIG=$(PSS_NODE=1 "$SCRIPTS/cluster-up.sh" | tail -n1)
export KUBECONFIG
say "cluster with a Ready node in $(($(date +%s) - t0))s"
K=$PSS_CLUSTER_DIR/bin/kubectl
kubectl() { "$K" --request-timeout=20s "$@"; }
# `make deploy` / `undeploy` run `kubectl` from PATH when KUBECONFIG is set: the cluster's own
# (v1.37.2), not whatever this machine has.
export PATH="$PSS_CLUSTER_DIR/bin:$PATH"
PSS_CLUSTER_DIR="$PSS_CLUSTER_DIR" "$SCRIPTS/node.sh" load "$IMAGE_ARCHIVE" "$IMG"
CRICTL=("$PSS_CLUSTER_DIR/bin/crictl" --config "$PSS_CLUSTER_DIR/node/crictl.yaml")
BUSYBOX=localhost/pss-busybox:latest

# ---- helpers ------------------------------------------------------------------------------------
operator_pods() { kubectl -n $NS get pods -l app.kubernetes.io/name=pss-operator -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }
ready_replicas() { [[ "$(kubectl -n $NS get deploy pss-operator -o jsonpath='{.status.readyReplicas}')" == 2 ]]; }
leader() { kubectl -n $NS get lease pss-operator-leader -o jsonpath='{.spec.holderIdentity}'; }
# host pid of a Pod's container, through CRI
container_pid() {
  local id
  id=$("${CRICTL[@]}" ps -q --pod "$("${CRICTL[@]}" pods -q --name "^$1\$" --namespace "$2" | head -n1)" --name "$3" | head -n1)
  [[ -n "$id" ]] || return 1
  "${CRICTL[@]}" inspect -o go-template --template '{{.info.pid}}' "$id"
}

process_checks() { # the operator's processes as the kubelet and runc started them
  local pod pid
  for pod in $(operator_pods); do
    pid=$(container_pid "$pod" $NS manager) || { echo "no running manager container in $pod"; return 1; }
    awk '/^Uid:|^Gid:/ {print}' "/proc/$pid/status"
    awk '/^Uid:/ {exit !($2 == 65532 && $3 == 65532)} ' "/proc/$pid/status" || { echo "$pod: uid not 65532"; return 1; }
    awk '/^Gid:/ {exit !($2 == 65532)} ' "/proc/$pid/status" || { echo "$pod: gid not 65532"; return 1; }
    # the root filesystem is mounted read-only in the container's mount namespace
    awk '$5 == "/" {print "root:", $6; exit !($6 ~ /(^|,)ro(,|$)/)}' "/proc/$pid/mountinfo" || { echo "$pod: root not read-only"; return 1; }
    grep -q 'NoNewPrivs:.*1' "/proc/$pid/status" || { echo "$pod: no_new_privs not set"; return 1; }
    grep -q '^CapEff:.*0000000000000000' "/proc/$pid/status" || { echo "$pod: has capabilities"; return 1; }
    grep -q '^Seccomp:.*2' "/proc/$pid/status" || { echo "$pod: no seccomp filter"; return 1; }
    # the in-cluster config: the ServiceAccount token and the Service address the kubelet gave it
    grep -qx 'KUBERNETES_SERVICE_HOST=10.0.0.1' < <(tr '\0' '\n' <"/proc/$pid/environ") || { echo "$pod: no KUBERNETES_SERVICE_HOST"; return 1; }
    [[ -s "/proc/$pid/root/var/run/secrets/kubernetes.io/serviceaccount/token" ]] || { echo "$pod: no token mounted"; return 1; }
  done
}

# /metrics is HTTPS on 8443 and answers only a bearer token whose user may `get` /metrics (issue
# 20): the ServiceAccount e2e-probe/metrics-reader is bound to pss-operator-metrics-reader. The
# node is this machine, so the Pod network is reached from here (the CNI bridge), with curl.
pod_metrics() { # $1: a Pod of the operator; its /metrics with the reader's token
  local ip token
  ip=$(kubectl -n $NS get pod "$1" -o jsonpath='{.status.podIP}')
  [[ -n "$ip" ]] || return 1
  token=$(kubectl -n e2e-probe create token metrics-reader --duration=10m)
  curl -sk --max-time 10 -H "Authorization: Bearer $token" "https://$ip:8443/metrics"
}

secure_metrics() { # the leader's /metrics over HTTPS from the Pod network: 401 anonymous, 200 to the reader
  local ip code out
  ip=$(kubectl -n $NS get pod "$(leader)" -o jsonpath='{.status.podIP}')
  [[ -n "$ip" ]] || return 1
  code=$(curl -sk --max-time 10 -o /dev/null -w '%{http_code}' "https://$ip:8443/metrics")
  echo "anonymous: $code"
  [[ "$code" == 401 ]] || return 1
  out=$(pod_metrics "$(leader)") || return 1
  sed -n '/^pss_namespace_level{/p' <<<"$out" | head -n 3 || true
  grep -q '^pss_namespace_level{.*namespace="app"' <<<"$out"
}

only_leader_exports() { # $1: the leader Pod
  local p n out
  for p in $(kubectl -n $NS get pods -l app.kubernetes.io/name=pss-operator -o name); do
    out=$(pod_metrics "${p#pod/}") || return 1
    n=$(grep -c '^pss_namespace_level' <<<"$out" || true)
    if [[ ${p#pod/} == "$1" ]]; then (( n > 0 )) || return 1; else (( n == 0 )) || return 1; fi
  done
}

privileged_counted() { # $1: the leader Pod
  local out
  [[ $(kubectl -n legacy get pod privileged -o jsonpath='{.status.phase}') == Running ]] || return 1
  out=$(pod_metrics "$1") || return 1
  grep -qx 'pss_privileged_containers{namespace="legacy"} 1' <<<"$out"
}

service_metrics() { # the Service routes its `metrics` port to the Pods' 8443
  [[ "$(kubectl -n $NS get endpoints pss-operator-metrics -o jsonpath='{.subsets[*].ports[*].port}')" == 8443 ]] &&
    [[ -n "$(kubectl -n $NS get endpoints pss-operator-metrics -o jsonpath='{.subsets[*].addresses[*].ip}')" ]]
}

label_is() { [[ "$(kubectl get ns "$1" -o jsonpath="{.metadata.labels.pod-security\.kubernetes\.io/$2}")" == "$3" ]]; }

operator_does_its_job() { # $1: how it was installed (for the test names)
  local how=$1 leader_pod
  check "$how: the API server admits the operator's Pods in $NS (enforce=restricted)" \
    bash -c "[[ \$('$K' get ns $NS -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}') == restricted ]] && [[ \$('$K' -n $NS get pods -l app.kubernetes.io/name=pss-operator --no-headers | wc -l) -ge 1 ]]"
  check "$how: two replicas Ready through their probes" eventually 180 ready_replicas
  check "$how: both Pods Running on node pss-node" bash -c \
    "[[ \$('$K' -n $NS get pods -l app.kubernetes.io/name=pss-operator -o jsonpath='{range .items[*]}{.status.phase}/{.spec.nodeName} {end}') == 'Running/pss-node Running/pss-node ' ]]"
  check "$how: uid/gid 65532, read-only root, no capabilities, seccomp, in-cluster config" process_checks
  check "$how: one leader among the two replicas" eventually 60 bash -c "'$K' -n $NS get lease pss-operator-leader -o jsonpath='{.spec.holderIdentity}' | grep -q pss-operator-"
  leader_pod=$(leader)
  check "$how: only the leader exports pss_* series" only_leader_exports "$leader_pod"
  check "$how: profile app labels namespace app (enforce baseline)" eventually 60 label_is app enforce baseline
  kubectl label ns app --overwrite pod-security.kubernetes.io/enforce=privileged >/dev/null
  check "$how: drift repaired (enforce privileged -> baseline)" eventually 30 label_is app enforce baseline
  check "$how: the metrics answer over HTTPS from the Pod network: 401 anonymous, 200 to the reader's token" eventually 30 secure_metrics
  check "$how: the metrics Service routes to the Pods' 8443" eventually 30 service_metrics
  check "$how: the privileged container really runs and is counted (pss_privileged_containers)" eventually 60 privileged_counted "$leader_pod"
  check "$how: profile app's status counts the running Pod that breaks audit=restricted" eventually 60 bash -c \
    "[[ \$('$K' get pssp app -o jsonpath='{.status.audit.violatingPods}') == 1 ]] && '$K' get pssp app -o jsonpath='{.status.audit.byCheck}' | grep -q runAsNonRoot"
}

nothing_left() { # $1: how it was removed
  check "$1: no operator Pod left on the node" eventually 60 bash -c "! '${CRICTL[0]}' ${CRICTL[*]:1} pods --namespace $NS -q | grep -q ."
  check "$1: no CRD, ClusterRole, ClusterRoleBinding left" bash -c "
    ! '$K' get crd podsecurityprofiles.pss-operator.io 2>/dev/null &&
    ! '$K' get clusterrole pss-operator 2>/dev/null && ! '$K' get clusterrolebinding pss-operator 2>/dev/null"
}

# ---- workloads the operator must see ------------------------------------------------------------
say "namespaces app (profile app; a Pod running as root), legacy (a privileged Pod) and e2e-probe"
kubectl create ns app >/dev/null
kubectl create ns legacy >/dev/null
kubectl create ns e2e-probe >/dev/null
# Who reads /metrics (as Prometheus would): bound to the ClusterRole both installs ship.
kubectl -n e2e-probe create serviceaccount metrics-reader >/dev/null
kubectl create clusterrolebinding e2e-metrics-reader --clusterrole=pss-operator-metrics-reader \
  --serviceaccount=e2e-probe:metrics-reader >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: privileged, namespace: legacy}
spec:
  automountServiceAccountToken: false
  containers:
  - name: shell
    image: $BUSYBOX
    imagePullPolicy: Never
    command: [/busybox, sleep, "3600"]
    securityContext: {privileged: true}
---
# Runs as root with the runtime's defaults: allowed by baseline (app's enforce), not by restricted
# (its audit and warn).
apiVersion: v1
kind: Pod
metadata: {name: root-shell, namespace: app}
spec:
  automountServiceAccountToken: false
  containers:
  - name: shell
    image: $BUSYBOX
    imagePullPolicy: Never
    command: [/busybox, sleep, "3600"]
EOF

# ---- kustomize ----------------------------------------------------------------------------------
say "make deploy (kubectl apply --server-side -k config/default)"
(cd "$ROOT" && make --no-print-directory deploy KUBECONFIG="$KUBECONFIG") >/dev/null
kubectl apply -k "$ROOT/config/samples" >/dev/null
operator_does_its_job kustomize
say "make undeploy"
kubectl delete -k "$ROOT/config/samples" --ignore-not-found >/dev/null
(cd "$ROOT" && make --no-print-directory undeploy KUBECONFIG="$KUBECONFIG") >/dev/null
check "kustomize: namespace $NS gone" eventually 120 bash -c "! '$K' get ns $NS 2>/dev/null"
nothing_left kustomize

# ---- helm ---------------------------------------------------------------------------------------
say "helm install (namespace $NS created and labelled first)"
kubectl create ns $NS >/dev/null
kubectl label ns $NS pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest >/dev/null
img=$IMG
"$HELM" install pss-operator "$ROOT/charts/pss-operator" --namespace $NS \
  --set "image.repository=${img%:*}" --set "image.tag=${img##*:}" --wait --timeout 5m >/dev/null
kubectl apply -k "$ROOT/config/samples" >/dev/null
kubectl label ns app --overwrite pod-security.kubernetes.io/enforce=privileged >/dev/null
operator_does_its_job helm
say "helm uninstall"
kubectl delete -k "$ROOT/config/samples" --ignore-not-found >/dev/null
"$HELM" uninstall pss-operator --namespace $NS --wait >/dev/null
nothing_left helm
check "helm: only the namespace it was given is left in $NS (no Secret of the release)" bash -c \
  "[[ -z \$('$K' -n $NS get all,secrets,configmaps,leases,roles,rolebindings,serviceaccounts -o name 2>/dev/null | grep -v -e '^configmap/kube-root-ca.crt' -e '^serviceaccount/default' -e '^lease.coordination.k8s.io/pss-operator-leader') ]]"
completed=1

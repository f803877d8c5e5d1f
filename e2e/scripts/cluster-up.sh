#!/usr/bin/env bash
# Starts a local Kubernetes control plane on loopback: etcd, kube-apiserver (PodSecurity admission
# on, RBAC, client-certificate auth, service-account keys) and kube-controller-manager. No Docker,
# no scheduler, no kubelet: Pods are admitted (or rejected) and then stay Pending.
#
# State (certificates, etcd data, logs, pid files) lives in $PSS_CLUSTER_DIR (default e2e/.cluster).
# Prints progress on stderr and the admin kubeconfig path as the last line of stdout.
# Running it again while the cluster is healthy only prints that path; a crashed earlier run is
# cleaned up first.
#
# Environment:
#   PSS_CLUSTER_DIR        state folder (default: e2e/.cluster next to this script)
#   PSS_CLUSTER_OWNER_PID  stop the cluster automatically once this process exits (used by the
#                          Rust e2e harness so no process outlives `cargo test`, even on a crash)
#   PSS_CLUSTER_TIMEOUT    seconds to wait for each readiness step (default 180)
#   PSS_APISERVER_EXTRA_ARGS  extra kube-apiserver flags, split on spaces (e2e/bench/scale.py passes
#                          an audit policy to count the operator's requests)
#   PSS_KCM_EXTRA_ARGS     extra kube-controller-manager flags, split on spaces (scale.py raises its
#                          client QPS so 10,000 namespaces get their ServiceAccounts in seconds)
#   PSS_NODE=1             also a real node (node.sh: containerd + runc, kubelet, kube-scheduler,
#                          CNI bridge); needs root, checked first. The API server then listens on
#                          every address (Pods reach it through the bridge).
#   KUBEBUILDER_ASSETS, TEST_ASSET_*, PSS_CACHE_DIR: see build-binaries.sh
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_PREFIX=cluster-up
TIMEOUT=${PSS_CLUSTER_TIMEOUT:-180}
KUBECONFIG_FILE="$CLUSTER_DIR/kubeconfig"
PKI="$CLUSTER_DIR/pki"

kubectl_admin() { "$CLUSTER_DIR/bin/kubectl" --kubeconfig "$KUBECONFIG_FILE" --request-timeout=5s "$@"; }

# All processes alive and /readyz OK (three tries, so a busy machine does not cost a restart).
healthy() {
  local name try
  [[ -f "$KUBECONFIG_FILE" && -x "$CLUSTER_DIR/bin/kubectl" ]] || return 1
  for name in "${COMPONENTS[@]}"; do [[ -n "$(component_pid "$name")" ]] || return 1; done
  for try in 1 2 3; do
    kubectl_admin get --raw /readyz >/dev/null 2>&1 && return 0
    ((try == 3)) || sleep 1
  done
  return 1
}

NODE=${PSS_NODE:-0}
[[ "$NODE" == 1 || "$NODE" == 0 ]] || die "PSS_NODE must be 0 or 1, not $NODE"
if [[ "$NODE" == 1 ]]; then
  COMPONENTS+=(containerd kubelet kube-scheduler)
fi

# ---- already running? ----------------------------------------------------------------------------
if healthy; then
  log "control plane already running (state in $CLUSTER_DIR)"
  echo "$KUBECONFIG_FILE"
  exit 0
fi
if [[ -e "$CLUSTER_MARKER" ]]; then
  log "found a previous run in $CLUSTER_DIR that is not healthy; cleaning it up"
  "$E2E_SCRIPTS/cluster-down.sh" "$CLUSTER_DIR"
elif [[ -d "$CLUSTER_DIR" && -n "$(ls -A "$CLUSTER_DIR" 2>/dev/null)" ]]; then
  die "$CLUSTER_DIR exists, is not empty and was not created by cluster-up.sh; choose another PSS_CLUSTER_DIR"
fi

if [[ "$NODE" == 1 ]]; then
  "$E2E_SCRIPTS/node.sh" preflight || die "NODE=1 needs the above (checked before anything was started)"
fi

started=$(date +%s)
mkdir -p "$CLUSTER_DIR"/{pids,logs,pki,etcd,restart}
chmod 700 "$CLUSTER_DIR/etcd" "$CLUSTER_DIR/pki"
touch "$CLUSTER_MARKER"

# From here on a failure stops whatever was started, keeps the logs and says where they are.
failed_component=""
on_exit() {
  local rc=$?
  [[ $rc -eq 0 ]] && return
  [[ -n "$failed_component" ]] && show_log_tail "$failed_component"
  log "cluster-up failed; stopping what was started. Logs stay in $CLUSTER_DIR/logs (cluster-down.sh $CLUSTER_DIR removes them)"
  stop_components
}
trap on_exit EXIT

# ---- binaries ------------------------------------------------------------------------------------
log "locating control-plane binaries (first run builds them with Go; see $E2E_SCRIPTS/build-binaries.sh)"
node_bins=()
build_args=()
if [[ "$NODE" == 1 ]]; then node_bins=(kubelet kube-scheduler crictl); build_args=(--node); fi
bin_dir=$("$E2E_SCRIPTS/build-binaries.sh" "${build_args[@]}" | tail -n 1)
for b in etcd kube-apiserver kube-controller-manager kubectl "${node_bins[@]}"; do
  [[ -x "$bin_dir/$b" ]] || die "build-binaries.sh reported $bin_dir but $b is not there"
done
ln -sfn "$bin_dir" "$CLUSTER_DIR/bin"

# ---- certificates --------------------------------------------------------------------------------
# ECDSA P-256 for TLS (instant to generate), RSA for the service-account signing key (the usual choice).
log "generating CA, serving and client certificates in $PKI"
ssl() { openssl "$@" 2>>"$CLUSTER_DIR/logs/openssl.log" >/dev/null || die "openssl $1 failed; see $CLUSTER_DIR/logs/openssl.log"; }
new_key() { ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$1.key"; }
new_key ca
ssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=pss-operator-e2e-ca" -days 3650 -out "$PKI/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
# sign NAME SUBJECT EXTENSIONS
sign() {
  new_key "$1"
  ssl req -new -key "$PKI/$1.key" -subj "$2" -out "$PKI/$1.csr"
  printf '%b\n' "$3" >"$PKI/$1.ext"
  ssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
    -extfile "$PKI/$1.ext" -out "$PKI/$1.crt"
}
sign apiserver "/CN=kube-apiserver" \
  "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
sign admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
sign controller-manager "/CN=system:kube-controller-manager" \
  "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
# The API server's client certificate for kubelets (logs, exec; the kubelet authenticates it by the CA).
sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" \
  "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
ssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key"
ssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

# ---- ports ---------------------------------------------------------------------------------------
# Random ports below the ephemeral range (32768+), skipping any that accept a connection.
taken=" "
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    [[ "$taken" == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free loopback port found"
}
etcd_port=$(free_port)
taken+="$etcd_port "
api_port=$(free_port)
server="https://127.0.0.1:$api_port"

write_kubeconfig() { # FILE USER CERT_NAME
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pss-local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 <"$PKI/$3.crt")
    client-key-data: $(base64 -w0 <"$PKI/$3.key")
contexts:
- name: pss-local
  context:
    cluster: pss-local
    user: $2
current-context: pss-local
EOF
  chmod 600 "$1"
}
write_kubeconfig "$CLUSTER_DIR/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
# The admin kubeconfig is written last under a temporary name: its presence means "was healthy once".
write_kubeconfig "$KUBECONFIG_FILE.tmp" admin admin

# ---- processes -----------------------------------------------------------------------------------
# start NAME BINARY ARGS...: own session (pid == process group), output to logs/NAME.log.
# It also writes restart/NAME.sh, the exact same command line (quoted with %q), so a fault test can
# stop a component (kill its process group) and start it again as it was: same flags, same ports,
# same data; the log is appended to and the pid file updated. The script prints the new pid.
start() {
  local name=$1 exe=$2
  shift 2
  {
    printf '#!/usr/bin/env bash\n# Restarts %s as cluster-up.sh started it.\nset -euo pipefail\n' "$name"
    printf 'setsid'
    printf ' %q' "$exe" "$@"
    printf ' </dev/null >>%q 2>&1 &\n' "$CLUSTER_DIR/logs/$name.log"
    printf 'echo $! >%q\necho $!\n' "$CLUSTER_DIR/pids/$name.pid"
  } >"$CLUSTER_DIR/restart/$name.sh"
  chmod +x "$CLUSTER_DIR/restart/$name.sh"
  setsid "$exe" "$@" </dev/null >"$CLUSTER_DIR/logs/$name.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/pids/$name.pid"
  log "started $name (pid $!, log $CLUSTER_DIR/logs/$name.log)"
}
alive_or_die() {
  local name
  for name in "$@"; do
    if [[ -z "$(component_pid "$name")" ]] || ! kill -0 "$(component_pid "$name")" 2>/dev/null; then
      failed_component=$name
      die "$name exited unexpectedly"
    fi
  done
}
# wait_for WHAT COMPONENTS... -- COMMAND...: polls COMMAND until it succeeds, failing fast when a
# component dies and after TIMEOUT seconds.
wait_for() {
  local what=$1 deadline=$(($(date +%s) + TIMEOUT)) comps=()
  shift
  while [[ "$1" != -- ]]; do comps+=("$1"); shift; done
  shift
  until "$@" >/dev/null 2>&1; do
    alive_or_die "${comps[@]}"
    if (($(date +%s) > deadline)); then
      failed_component=${comps[-1]}
      die "timed out after ${TIMEOUT}s waiting for $what"
    fi
    sleep 0.5
  done
}

start_etcd() {
  start etcd "$CLUSTER_DIR/bin/etcd" \
    --name=pss-local \
    --data-dir="$CLUSTER_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls=http://127.0.0.1:0 \
    --unsafe-no-fsync=true \
    --log-level=warn
}
# etcd has been seen to exit at once, with nothing in its log, on a loaded machine (about one start
# in fifty here): a start that dies before it listens is retried, twice, on a new port and an empty
# data folder; anything else still fails at once.
for attempt in 1 2 3; do
  start_etcd
  if (wait_for "etcd on 127.0.0.1:$etcd_port" etcd -- bash -c "exec 3<>/dev/tcp/127.0.0.1/$etcd_port"); then
    break
  fi
  ((attempt < 3)) || die "etcd did not start in 3 attempts (log: $CLUSTER_DIR/logs/etcd.log)"
  log "etcd exited before listening (attempt $attempt; its log: $(tr '\n' ' ' <"$CLUSTER_DIR/logs/etcd.log" | cut -c1-300)); retrying on a new port"
  kill "$(component_pid etcd)" 2>/dev/null || true
  rm -rf "$CLUSTER_DIR/etcd"
  etcd_port=$(free_port)
  taken+="$etcd_port "
done

read -r -a apiserver_extra <<<"${PSS_APISERVER_EXTRA_ARGS:-}"
read -r -a kcm_extra <<<"${PSS_KCM_EXTRA_ARGS:-}"
bind_address=127.0.0.1
[[ "$NODE" == 1 ]] && bind_address=0.0.0.0
start kube-apiserver "$CLUSTER_DIR/bin/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$etcd_port" \
  --bind-address="$bind_address" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP \
  --advertise-address=127.0.0.1 \
  --secure-port="$api_port" \
  --cert-dir="$CLUSTER_DIR/apiserver-certs" \
  --tls-cert-file="$PKI/apiserver.crt" \
  --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --authorization-mode=Node,RBAC \
  --service-account-issuer="$server" \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --allow-privileged=true \
  --endpoint-reconciler-type=none \
  "${apiserver_extra[@]}"
mv "$KUBECONFIG_FILE.tmp" "$KUBECONFIG_FILE"
log "waiting for kube-apiserver $server/readyz"
wait_for "kube-apiserver /readyz" etcd kube-apiserver -- kubectl_admin get --raw /readyz

start kube-controller-manager "$CLUSTER_DIR/bin/kube-controller-manager" \
  --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" \
  --cluster-signing-key-file="$PKI/ca.key" \
  --use-service-account-credentials \
  --controllers='*' \
  --leader-elect=false \
  --bind-address=127.0.0.1 \
  --secure-port=0 \
  "${kcm_extra[@]}"
log "waiting for namespace default and ServiceAccount default/default"
wait_for "namespace default" etcd kube-apiserver kube-controller-manager -- kubectl_admin get namespace default
wait_for "ServiceAccount default/default (created by kube-controller-manager)" \
  etcd kube-apiserver kube-controller-manager -- kubectl_admin -n default get serviceaccount default

if [[ "$NODE" == 1 ]]; then
  failed_component=kubelet
  "$E2E_SCRIPTS/node.sh" up
  failed_component=""
fi

if [[ -n "${PSS_CLUSTER_OWNER_PID:-}" ]]; then
  # Passing the state folder in argv makes the watchdog recognisable by component_pid.
  setsid "$E2E_SCRIPTS/cluster-down.sh" --wait-for "$PSS_CLUSTER_OWNER_PID" "$CLUSTER_DIR" \
    </dev/null >"$CLUSTER_DIR/logs/watchdog.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/pids/watchdog.pid"
  log "watchdog (pid $!) stops this control plane when process $PSS_CLUSTER_OWNER_PID exits"
fi

log "control plane ready in $(($(date +%s) - started))s: $server (etcd 127.0.0.1:$etcd_port)"
log "  export KUBECONFIG=$KUBECONFIG_FILE"
echo "$KUBECONFIG_FILE"

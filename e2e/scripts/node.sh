#!/usr/bin/env bash
# A real node for the local control plane (`make cluster-up NODE=1`): containerd + runc through
# CRI, kubelet (cgroupfs driver, failCgroupV1: false), kube-scheduler, Debian's CNI bridge plugin,
# a pause image built here from Kubernetes' own pause.c. Needs root.
#
#   node.sh preflight         what the node needs from the system, checked in about a second
#   node.sh up                called by cluster-up.sh once the control plane is ready
#   node.sh down              called by cluster-down.sh before the control plane stops
#   node.sh load ARCHIVE NAME import an OCI archive into the node's containerd as image NAME
#
# Everything lives in $CLUSTER_DIR/node (containerd's root, state and socket, runc's state, the
# kubelet's root and pod logs, CNI IP allocations), except what the kernel keeps elsewhere and
# `down` removes: the bridge pss0 (10.244.0.0/24, the Pods' network), the iptables chain PSS-NODE
# (Pods reach the API server as the in-cluster config does, at the `kubernetes` Service
# 10.0.0.1:443, DNATed to the API server's port), cgroups under /pss-node in every hierarchy,
# network namespaces and mounts of the Pods, and the kubelet's /var/log/containers links.
# One node cluster at a time on a machine (these names are fixed).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_PREFIX=node

NODE_DIR="$CLUSTER_DIR/node"
NODE_NAME=pss-node
BRIDGE=pss0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
CHAIN=PSS-NODE
CGROUP_ROOT=/pss-node
SERVICE_IP=10.0.0.1
SOCK="$NODE_DIR/containerd.sock"
CACHE_ROOT=${PSS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pss-operator}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
PAUSE_IMAGE="localhost/pss-pause:$K8S_VERSION"
CNI_BIN_DIR=${CNI_BIN_DIR:-/usr/lib/cni}

# crictl's own config file (else it warns about /etc/crictl.yaml on every call); up writes it.
crictl_() { "$CLUSTER_DIR/bin/crictl" --config "$NODE_DIR/crictl.yaml" "$@"; }
ctr_() { ctr --address "$SOCK" --namespace k8s.io "$@"; }

# ---- preflight ---------------------------------------------------------------------------------
preflight() {
  local missing=() c
  [[ $(id -u) -eq 0 ]] || missing+=("root: a node (kubelet, containerd, runc, network namespaces, iptables, cgroups) needs root; run as root (sudo -E make ...)")
  for c in containerd containerd-shim-runc-v2 ctr runc; do
    command -v "$c" >/dev/null || missing+=("$c: apt-get install containerd runc")
  done
  for c in iptables ip; do command -v "$c" >/dev/null || missing+=("$c: apt-get install iptables iproute2"); done
  command -v curl >/dev/null || missing+=("curl (the kubelet's healthz): apt-get install curl")
  command -v go >/dev/null || missing+=("go (the pause image's source, from the Go module proxy): https://go.dev/doc/install")
  for c in bridge host-local loopback; do
    [[ -x "$CNI_BIN_DIR/$c" ]] || missing+=("CNI plugin $CNI_BIN_DIR/$c: apt-get install containernetworking-plugins")
  done
  command -v musl-gcc >/dev/null || missing+=("musl-gcc (the pause image): apt-get install musl-tools")
  command -v buildah >/dev/null || missing+=("buildah (the pause image): apt-get install buildah")
  if [[ ! -x /bin/busybox ]] || readelf -lW /bin/busybox 2>/dev/null | grep -q interpreter; then
    missing+=("a static /bin/busybox (the e2e probe image): apt-get install busybox-static")
  fi
  if ((${#missing[@]})); then
    for c in "${missing[@]}"; do log "missing: $c"; done
    return 1
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1 || iptables -t nat -S "$CHAIN" >/dev/null 2>&1; then
    log "another NODE=1 cluster seems to run on this machine (bridge $BRIDGE or iptables chain $CHAIN exists);"
    log "stop it with its cluster-down.sh first (one node cluster per machine)"
    return 1
  fi
}

# ---- images built here -------------------------------------------------------------------------
# A FROM scratch image of one static binary, as an OCI archive in the cache (built once).
# build_image NAME ARCHIVE BINARY USER ENTRYPOINT_JSON
build_image() {
  local name=$1 archive=$2 binary=$3 user=$4 entrypoint=$5 ctx store
  [[ -s "$archive" ]] && return 0
  ctx=$(mktemp -d)
  store="$CACHE_ROOT/containers"
  cp "$binary" "$ctx/$(basename "$binary")"
  printf 'FROM scratch\nCOPY %s /%s\nUSER %s\nENTRYPOINT %s\n' "$(basename "$binary")" "$(basename "$binary")" "$user" "$entrypoint" >"$ctx/Containerfile"
  mkdir -p "$(dirname "$archive")"
  buildah --storage-driver vfs --root "$store/storage" --runroot "$store/run" bud --isolation chroot \
    --timestamp 0 --identity-label=false --layers=false -f "$ctx/Containerfile" -t "$name" "$ctx" >&2
  buildah --storage-driver vfs --root "$store/storage" --runroot "$store/run" push "$name" "oci-archive:$archive.tmp:$name" >&2
  mv "$archive.tmp" "$archive"
  rm -rf "$ctx"
}

pause_archive() {
  local dir="$CACHE_ROOT/node-images-$K8S_VERSION" src
  if [[ ! -s "$dir/pause.oci.tar" ]]; then
    mkdir -p "$dir"
    src=$(cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
    log "building the pause image from $src/build/pause/linux/pause.c (musl, static)"
    musl-gcc -Os -static -Wall -Werror -DVERSION="$K8S_VERSION-pss-operator" -o "$dir/pause" "$src/build/pause/linux/pause.c"
    strip "$dir/pause"
    build_image "$PAUSE_IMAGE" "$dir/pause.oci.tar" "$dir/pause" 65535:65535 '["/pause"]'
  fi
  echo "$dir/pause.oci.tar"
}

# The e2e probe: Debian's static busybox (wget for the metrics, sleep for a privileged container).
busybox_archive() {
  local dir="$CACHE_ROOT/node-images-$K8S_VERSION" sum
  sum=$(sha256sum /bin/busybox | cut -c1-12)
  if [[ ! -s "$dir/busybox-$sum.oci.tar" ]]; then
    mkdir -p "$dir"
    cp /bin/busybox "$dir/busybox"
    build_image "localhost/pss-busybox:$sum" "$dir/busybox-$sum.oci.tar" "$dir/busybox" 0:0 '["/busybox"]'
  fi
  echo "$dir/busybox-$sum.oci.tar"
}

# load ARCHIVE NAME: import into containerd's k8s.io namespace and name it NAME as CRI sees it
# (a short name like pss-operator:latest is docker.io/library/pss-operator:latest there).
load() {
  local archive=$1 name=$2 full digest
  full=$name
  [[ "$full" == */* ]] || full="docker.io/library/$full"
  [[ "${full%%/*}" == *.* || "${full%%/*}" == *:* || "${full%%/*}" == localhost ]] || full="docker.io/$full"
  [[ "${full##*/}" == *:* || "$full" == *@* ]] || full="$full:latest"
  digest=$(ctr_ images import --digests --all-platforms "$archive" 2>&1 | tee -a "$CLUSTER_DIR/logs/ctr-import.log" | grep -oE 'sha256:[0-9a-f]{64}' | head -n1) \
    || die "ctr images import $archive failed (see $CLUSTER_DIR/logs/ctr-import.log)"
  [[ -n "$digest" ]] || die "ctr images import printed no digest for $archive"
  ctr_ images rm "$full" >/dev/null 2>&1 || true
  # The import names the image import-DATE@DIGEST; give it the CRI name (and keep it from image GC).
  local imported
  imported=$(ctr_ images ls -q | grep -F "@$digest" | head -n1 || true)
  [[ -n "$imported" ]] || imported=$(ctr_ images ls | awk -v d="$digest" '$3 == d {print $1; exit}')
  [[ -n "$imported" ]] || die "imported $archive ($digest) but cannot find it in containerd"
  [[ "$imported" == "$full" ]] || ctr_ images tag --force "$imported" "$full" >/dev/null
  ctr_ images label "$full" io.cri-containerd.pinned=pinned >/dev/null
  crictl_ inspecti "$full" >/dev/null || die "CRI does not see $full after the import"
  log "loaded $archive as $full ($digest)"
}

# ---- up ----------------------------------------------------------------------------------------
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "no free port"
}

start_node_component() { # NAME ARGS... (own session; pid file; log), as cluster-up.sh's start()
  local name=$1
  shift
  setsid "$@" </dev/null >"$CLUSTER_DIR/logs/$name.log" 2>&1 &
  echo $! >"$CLUSTER_DIR/pids/$name.pid"
  log "started $name (pid $!, log $CLUSTER_DIR/logs/$name.log)"
}

wait_until() { # WHAT SECONDS COMPONENT COMMAND...
  local what=$1 deadline=$(($(date +%s) + $2)) comp=$3
  shift 3
  until "$@" >/dev/null 2>&1; do
    if [[ -z "$(component_pid "$comp")" ]]; then show_log_tail "$comp"; die "$comp exited while waiting for $what"; fi
    if (($(date +%s) > deadline)); then show_log_tail "$comp"; die "timed out waiting for $what"; fi
    sleep 0.5
  done
}

up() {
  local pki="$CLUSTER_DIR/pki" server api_port kubelet_port healthz_port ctrl
  server=$(awk '/server:/ {print $2; exit}' "$CLUSTER_DIR/kubeconfig")
  api_port=${server##*:}
  mkdir -p "$NODE_DIR"/{cni/net.d,cni/ipam,kubelet,pod-logs,containerd-root,containerd-state,runc,volume-plugins}

  # Certificates: the kubelet's client (system:node:NAME in system:nodes, for the Node authorizer)
  # and serving certificate, the scheduler's client; all from the cluster CA.
  ssl() { openssl "$@" 2>>"$CLUSTER_DIR/logs/openssl.log" >/dev/null || die "openssl $1 failed"; }
  sign() {
    ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$1.key"
    ssl req -new -key "$pki/$1.key" -subj "$2" -out "$pki/$1.csr"
    printf '%b\n' "$3" >"$pki/$1.ext"
    ssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt"
  }
  sign kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
  sign kubelet-serving "/CN=$NODE_NAME" "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
  sign scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment"
  kubeconfig() { # FILE USER CERT
    cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pss-local
  cluster: {server: "$server", certificate-authority: "$pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$pki/$3.crt", client-key: "$pki/$3.key"}
contexts:
- name: pss-local
  context: {cluster: pss-local, user: $2}
current-context: pss-local
EOF
  }
  kubeconfig "$NODE_DIR/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet-client
  kubeconfig "$NODE_DIR/scheduler.kubeconfig" system:kube-scheduler scheduler

  # Network: the Pods' bridge (made here, so the kubelet's node IP exists before it starts) and
  # the `kubernetes` Service, which the in-cluster config dials, DNATed to the API server.
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  iptables -t nat -N "$CHAIN"
  iptables -t nat -A "$CHAIN" -d "$SERVICE_IP/32" -p tcp --dport 443 -j DNAT --to-destination "$NODE_IP:$api_port"
  iptables -t nat -A PREROUTING -i "$BRIDGE" -j "$CHAIN"
  cat >"$NODE_DIR/cni/net.d/10-pss-node.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "pss-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_DIR/cni/ipam"
      }
    }
  ]
}
EOF

  # cgroups: the kubelet's root, in every hierarchy (cgroup v1 here; v2 has one).
  for ctrl in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -e "$ctrl/cgroup.procs" ]] && mkdir -p "$ctrl${CGROUP_ROOT#/}"
  done

  cat >"$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd-root"
state = "$NODE_DIR/containerd-state"
[grpc]
  address = "$SOCK"
[debug]
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$NODE_DIR/cni/net.d"
EOF
  printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 20\n' "$SOCK" "$SOCK" >"$NODE_DIR/crictl.yaml"
  start_node_component containerd containerd --config "$NODE_DIR/containerd.toml"
  wait_until "containerd's CRI on $SOCK" 60 containerd crictl_ info
  load "$(pause_archive)" "$PAUSE_IMAGE"
  load "$(busybox_archive)" "localhost/pss-busybox:latest"

  kubelet_port=$(free_port)
  healthz_port=$(free_port)
  cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
podLogsDir: $NODE_DIR/pod-logs
volumePluginDir: $NODE_DIR/volume-plugins
resolvConf: /etc/resolv.conf
maxPods: 50
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
EOF
  start_node_component kubelet "$CLUSTER_DIR/bin/kubelet" \
    --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet" \
    --cert-dir="$NODE_DIR/kubelet-pki" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --v=1
  echo "$healthz_port" >"$NODE_DIR/kubelet-healthz-port"
  start_node_component kube-scheduler "$CLUSTER_DIR/bin/kube-scheduler" \
    --kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$NODE_DIR/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=0
  wait_until "the kubelet's healthz" 120 kubelet curl -fsS "http://127.0.0.1:$healthz_port/healthz"
  wait_until "node $NODE_NAME Ready" 180 kubelet \
    bash -c "'$CLUSTER_DIR/bin/kubectl' --kubeconfig '$CLUSTER_DIR/kubeconfig' get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  log "node $NODE_NAME Ready (Pods on $BRIDGE $POD_CIDR; kubernetes Service $SERVICE_IP:443 -> $NODE_IP:$api_port)"
}

# ---- down --------------------------------------------------------------------------------------
# Everything up made, each step tolerant of what is already gone, so it also cleans a crashed run.
down() {
  local name pid pids p m
  # 1. no new Pods: kubelet and scheduler first.
  for name in kube-scheduler kubelet; do
    pid=$(component_pid "$name")
    [[ -n "$pid" ]] && stop_groups "$name=$pid"
    rm -f "$CLUSTER_DIR/pids/$name.pid"
  done
  # 2. every Pod sandbox through CRI: containers stopped, CNI DEL (veth, IP), netns removed.
  if [[ -n "$(component_pid containerd)" && -S "$SOCK" ]]; then
    for p in $(crictl_ pods -q 2>/dev/null); do crictl_ stopp "$p" >/dev/null 2>&1 || true; done
    for p in $(crictl_ pods -q 2>/dev/null); do crictl_ rmp -f "$p" >/dev/null 2>&1 || true; done
  fi
  # 3. containerd, then any shim it left (they outlive it by design) and their processes.
  pid=$(component_pid containerd)
  [[ -n "$pid" ]] && stop_groups "containerd=$pid"
  rm -f "$CLUSTER_DIR/pids/containerd.pid"
  pids=()
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $SOCK" && pids+=("${p#/proc/}")
  done
  if ((${#pids[@]})); then log "killing ${#pids[@]} leftover containerd shim(s)"; kill -KILL "${pids[@]}" 2>/dev/null || true; fi
  # Whatever still runs in the node's cgroups (containers whose shim was killed).
  local cg
  for cg in /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup/"${CGROUP_ROOT#/}"; do
    [[ -d "$cg" ]] || continue
    # shellcheck disable=SC2038 # xargs gets pids (the files' contents), not file names
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
  done
  sleep 0.5
  # 4. mounts under the node folder (Pod volumes, the kubelet's root, overlay snapshots), deepest first.
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done < <(awk -v d="$NODE_DIR" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
  # network namespaces whose CNI teardown did not happen (their mount is under /run/netns)
  for m in /run/netns/cni-*; do
    [[ -e "$m" ]] || continue
    if ip netns exec "$(basename "$m")" ip -o addr 2>/dev/null | grep -q "${POD_CIDR%.*}\."; then
      ip netns delete "$(basename "$m")" 2>/dev/null || true
    fi
  done
  # 5. cgroups, leaves first.
  for cg in /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup/"${CGROUP_ROOT#/}"; do
    [[ -d "$cg" ]] || continue
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [[ -d "$cg" ]] && log "cgroup $cg is still there"
  done
  # 6. network: the DNAT chain and the bridge.
  if iptables -t nat -S "$CHAIN" >/dev/null 2>&1; then
    while iptables -t nat -D PREROUTING -i "$BRIDGE" -j "$CHAIN" 2>/dev/null; do :; done
    iptables -t nat -F "$CHAIN"
    iptables -t nat -X "$CHAIN"
  fi
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  # 7. the kubelet's links in /var/log/containers to our pod logs.
  for m in /var/log/containers/*.log; do
    [[ -L "$m" && "$(readlink "$m")" == "$NODE_DIR"/* ]] && rm -f "$m"
  done
  return 0
}

# leftovers: prints what of a node is still on this machine (nothing when clean); exit 1 if any.
leftovers() {
  local found=0 p
  ip link show "$BRIDGE" >/dev/null 2>&1 && { echo "bridge $BRIDGE"; found=1; }
  iptables -t nat -S "$CHAIN" >/dev/null 2>&1 && { echo "iptables chain $CHAIN"; found=1; }
  for p in /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup/"${CGROUP_ROOT#/}"; do
    [[ -d "$p" ]] && { echo "cgroup $p"; found=1; }
  done
  if awk -v d="$NODE_DIR" 'index($5, d) == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then echo "mounts under $NODE_DIR"; found=1; fi
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$NODE_DIR"; then echo "process ${p#/proc/}: $({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | cut -c1-120)"; found=1; fi
  done
  return $((found))
}

case "${1:-}" in
  preflight) preflight ;;
  up) up ;;
  down) down ;;
  load) load "${2:?archive}" "${3:?name}" ;;
  leftovers) leftovers ;;
  *) echo "usage: $0 preflight|up|down|load ARCHIVE NAME|leftovers" >&2; exit 2 ;;
esac

# Sourced by scripts/k8s-test.sh: a real Kubernetes cluster of three nodes on this one
# machine, each node its own network namespace, and everything removed again. Also by
# scripts/k8s-scale.sh, which runs the control plane alone (etcd and kube-apiserver, no
# nodes) under names and directories of its own, so that both tiers can run at once.
#
# Layout (addresses only from the test ranges, nothing on the host's own interfaces):
#   wk-sw   the underlay switch: bridge br0, one veth port per host below
#   wk-cp   the control plane, 198.18.0.10: etcd (127.0.0.1), kube-apiserver (:6443),
#           kube-controller-manager (--allocate-node-cidrs, 10.244.0.0/16 in /24s),
#           kube-scheduler; kubectl and helm run here too
#   wk-nN   node N (1-3), 198.18.0.1N: containerd + runc, kubelet, kube-proxy
#
# A node is a network namespace plus a mount and a UTS namespace of its own, kept as files
# under $K8S_RUN/ns. containerd, kubelet and kube-proxy of a node enter all three with
# nsenter, so that:
# - kubelet and containerd share one mount namespace (containerd must see the secret and
#   token volumes kubelet mounts);
# - every hostPath a DaemonSet uses is the node's own (/etc/cni/net.d, /opt/cni/bin,
#   /run/flannel, ...: bind mounts over the host's paths inside the node's namespace);
# - hostNetwork pods (weft's) live in the node's network namespace: containerd starts
#   them without a network namespace of their own, in its own, which is the node's.
# `ip netns exec` is not used for them: it remounts /sys, and with it every cgroup mount.
# Each kubelet has its own cgroup root (/weft-k8s-wk-nN), root directory and pod log
# directory: a kubelet removes pod cgroups and log directories it does not know.

K8S_RUN=/run/weft-k8s
K8S_STATE=/var/lib/weft-k8s
K8S_LOGS=${WEFT_K8S_LOGS:-/var/log/weft-k8s}
K8S_NODES="wk-n1 wk-n2 wk-n3"
CP_NS=wk-cp
SWITCH_NS=wk-sw
# The namespaces that are this tier's (leftovers): its own, and the pods'.
K8S_NETNS_PATTERN='^(wk-|cni-)'
CP_IP=198.18.0.10
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
PKI=$K8S_STATE/pki
# Host paths each node has its own copy of (bind mounts in its mount namespace): what the
# CNI plugins, containerd's CRI and weft's DaemonSet use on "the host".
NODE_PRIVATE_DIRS="/etc/cni/net.d /opt/cni/bin /var/lib/cni /var/log/containers /var/log/pods /run/flannel"
# Host paths the DaemonSet mounts read-only that all nodes share: the kernel's modules
# (netpol's sidecar mounts /lib/modules; the nodes run on one kernel). Made here when
# the host has none (containerd would make it, and leave it behind) and removed again.
NODE_SHARED_DIRS="/lib/modules"

node_ip() { echo "198.18.0.1${1#wk-n}"; }
node_dir() { echo "$K8S_STATE/$1"; }
node_socket() { echo "$K8S_RUN/$1/containerd.sock"; }

# Runs a command inside node $1's namespaces (network, mount, UTS).
innode() {
    local node=$1
    shift
    nsenter --mount="$K8S_RUN/ns/$node.mnt" --uts="$K8S_RUN/ns/$node.uts" --net="/run/netns/$node" -- "$@"
}

# As start_daemon, in node $2's namespaces.
start_node_daemon() {
    local name=$1 node=$2
    shift 2
    start_daemon "$name" nsenter --mount="$K8S_RUN/ns/$node.mnt" --uts="$K8S_RUN/ns/$node.uts" \
        --net="/run/netns/$node" -- "$@"
}

# Starts a daemon in the background, its output in $K8S_LOGS/$1.log and its pid in
# $K8S_RUN/pids/$1 (the teardown kills exactly these). nsenter and `ip netns exec` exec the
# command in place, so $! is the daemon.
start_daemon() {
    local name=$1
    shift
    nohup "$@" >>"$K8S_LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$K8S_RUN/pids/$name"
    # Not a job of this shell: the teardown's kill is not reported as "Killed".
    disown $!
}

kubectl() { ip netns exec "$CP_NS" "$K8S_BIN/kubectl" --kubeconfig "$PKI/admin.kubeconfig" "$@"; }

# Waits up to $1 seconds for the command after it to succeed; fails with its output.
wait_until() {
    local limit=$1 started=$SECONDS
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - started >= limit)); then
            echo "k8s-test.sh: timed out after ${limit}s waiting for: $*" >&2
            "$@" >&2 || true
            return 1
        fi
        sleep 1
    done
}

# The certificates and kubeconfigs: one CA, the API server's serving certificate, and a
# client certificate per component (the Node authorizer wants kubelets as
# system:node:<name> in system:nodes).
make_pki() {
    mkdir -p "$PKI"
    (
        cd "$PKI"
        openssl req -x509 -new -nodes -newkey rsa:2048 -keyout ca.key -out ca.crt -days 30 \
            -subj /CN=weft-k8s-test-ca -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign 2>/dev/null
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
        make_cert apiserver /CN=kube-apiserver serverAuth \
            "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$CP_IP,IP:$KUBERNETES_SERVICE_IP"
        make_cert apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
        make_cert admin /O=system:masters/CN=kubernetes-admin clientAuth
        make_cert controller-manager /CN=system:kube-controller-manager clientAuth
        make_cert scheduler /CN=system:kube-scheduler clientAuth
        make_cert kube-proxy /CN=system:kube-proxy clientAuth
        make_kubeconfig admin
        make_kubeconfig controller-manager
        make_kubeconfig scheduler
        make_kubeconfig kube-proxy
        local node
        for node in $K8S_NODES; do
            make_cert "kubelet-$node" "/O=system:nodes/CN=system:node:$node" clientAuth
            make_kubeconfig "kubelet-$node"
        done
        chmod 600 ./*.key ./*.kubeconfig
    )
}

# make_cert NAME SUBJECT EXTENDED-KEY-USAGE [SUBJECT-ALT-NAMES], in the current directory.
make_cert() {
    {
        echo "basicConstraints = critical,CA:FALSE"
        echo "keyUsage = critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage = $3"
        [ -z "${4:-}" ] || echo "subjectAltName = $4"
    } >"$1.ext"
    openssl req -new -nodes -newkey rsa:2048 -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
        -days 30 -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

make_kubeconfig() {
    cat >"$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weft-k8s-test
  cluster:
    server: https://$CP_IP:6443
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $1
  user:
    client-certificate-data: $(base64 -w0 "$1.crt")
    client-key-data: $(base64 -w0 "$1.key")
contexts:
- name: weft-k8s-test
  context: {cluster: weft-k8s-test, user: $1}
current-context: weft-k8s-test
EOF
}

# The switch and the control plane's host.
network_up() {
    ip netns add "$SWITCH_NS"
    ip -n "$SWITCH_NS" link set lo up
    ip -n "$SWITCH_NS" link add br0 type bridge
    ip -n "$SWITCH_NS" link set br0 up
    plug_into_switch "$CP_NS" "$CP_IP"
}

# Creates network namespace $1 with address $2/24 on eth0, a port of the switch.
plug_into_switch() {
    ip netns add "$1"
    ip -n "$1" link set lo up
    ip -n "$SWITCH_NS" link add "p-$1" type veth peer name eth0 netns "$1"
    ip -n "$SWITCH_NS" link set "p-$1" master br0 up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
}

control_plane_up() {
    start_etcd
    start_apiserver
    start_controllers
}

start_etcd() {
    mkdir -p "$K8S_STATE/etcd"
    start_daemon etcd ip netns exec "$CP_NS" etcd --name weft-k8s --data-dir "$K8S_STATE/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster weft-k8s=http://127.0.0.1:2380
}

# The API server (with the flags in the array K8S_APISERVER_ARGS added, if set), waited
# for until it answers /readyz.
start_apiserver() {
    start_daemon kube-apiserver ip netns exec "$CP_NS" "$K8S_BIN/kube-apiserver" \
        --advertise-address="$CP_IP" --bind-address=0.0.0.0 --secure-port=6443 \
        --etcd-servers=http://127.0.0.1:2379 \
        --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --client-ca-file="$PKI/ca.crt" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --profiling=false ${K8S_APISERVER_ARGS[@]+"${K8S_APISERVER_ARGS[@]}"}
    wait_until 120 kubectl get --raw /readyz
}

start_controllers() {
    start_daemon kube-controller-manager ip netns exec "$CP_NS" "$K8S_BIN/kube-controller-manager" \
        --kubeconfig="$PKI/controller-manager.kubeconfig" \
        --authentication-kubeconfig="$PKI/controller-manager.kubeconfig" \
        --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
        --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
        --allocate-node-cidrs=true --cluster-cidr="$CLUSTER_CIDR" --node-cidr-mask-size=24 \
        --service-cluster-ip-range="$SERVICE_CIDR" --configure-cloud-routes=false \
        --node-monitor-grace-period=20s
    start_daemon kube-scheduler ip netns exec "$CP_NS" "$K8S_BIN/kube-scheduler" \
        --kubeconfig="$PKI/scheduler.kubeconfig" \
        --authentication-kubeconfig="$PKI/scheduler.kubeconfig" \
        --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --leader-elect=false
}

# Node $1's namespaces, directories and cgroups.
node_host_up() {
    local node=$1 dir
    dir=$(node_dir "$node")
    plug_into_switch "$node" "$(node_ip "$node")"
    # A default route, as every real node has: without one the kernel refuses to send to
    # a ClusterIP (10.96.0.1) before kube-proxy's DNAT can rewrite it. It points at the
    # control plane's host, which forwards nothing further.
    ip -n "$node" route add default via "$CP_IP"
    ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1
    mkdir -p "$dir"/{kubelet,pod-logs,containerd,containerd-opt,etc} "$dir/sysctl-vm" \
        "$dir/sysctl-kernel/keys" "$K8S_RUN/$node"
    local path
    for path in $NODE_PRIVATE_DIRS $NODE_SHARED_DIRS; do
        # The host's own path is only a mount point here; one made for it goes again.
        [ -d "$path" ] || { mkdir -p "$path" && echo "$path" >>"$K8S_RUN/host-dirs-made"; }
    done
    for path in $NODE_PRIVATE_DIRS; do mkdir -p "$dir/private$path"; done
    # containerd's CRI needs loopback; the chart's conflist delegates to bridge, host-local
    # and portmap (weft's init container adds `flannel`).
    cp /usr/lib/cni/* "$dir/private/opt/cni/bin/"
    tr -d - </proc/sys/kernel/random/uuid >"$dir/machine-id"
    # kubelet sets six kernel settings that are the whole machine's (setupKernelTunables):
    # inside the node it reads these files instead, finds the values it wants and writes
    # nothing to the host.
    local sysctl value
    for sysctl in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
        kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
        value=${sysctl#*=}
        echo "$value" >"$dir/sysctl-${sysctl%%=*}"
    done
    # Its own cgroup root in every v1 hierarchy (kubelet wants it to exist).
    local hierarchy
    for hierarchy in /sys/fs/cgroup/*/; do
        case $hierarchy in */unified/) continue ;; esac
        mkdir -p "$hierarchy/weft-k8s-$node"
    done
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/weft-k8s-$node/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/weft-k8s-$node/cpuset.mems"
    touch "$K8S_RUN/ns/$node.mnt" "$K8S_RUN/ns/$node.uts"
    local binds="hostname $node"
    for path in $NODE_PRIVATE_DIRS; do binds+="; mount --bind $dir/private$path $path"; done
    binds+="; mount --bind $dir/machine-id /etc/machine-id"
    for sysctl in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
        kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
        binds+="; mount --bind $dir/sysctl-$sysctl /proc/sys/$sysctl"
    done
    nsenter --net="/run/netns/$node" -- unshare --mount="$K8S_RUN/ns/$node.mnt" \
        --uts="$K8S_RUN/ns/$node.uts" --propagation slave sh -ec "$binds"
}

containerd_config() {
    local node=$1 dir
    dir=$(node_dir "$node")
    cat <<EOF
version = 2
root = "$dir/containerd"
state = "$K8S_RUN/$node/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$(node_socket "$node")"
[ttrpc]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  # This machine's root lacks CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj below containerd's (0): CRI's -998 for the sandbox failed in runc
  # ("failed to update /proc/self/oom_score_adj: Permission denied"). Clamp instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$K8S_RUN/$node/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
EOF
}

kubelet_config() {
    local node=$1 dir
    dir=$(node_dir "$node")
    cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$(node_socket "$node")
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: /weft-k8s-$node
enforceNodeAllocatable: [pods]
podLogsDir: $dir/pod-logs
failSwapOn: false
failCgroupV1: false
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
clusterDomain: cluster.local
clusterDNS: [$DNS_SERVICE_IP]
resolvConf: /etc/resolv.conf
rotateCertificates: false
serializeImagePulls: false
EOF
}

kube_proxy_config() {
    cat <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $1
mode: iptables
clusterCIDR: $CLUSTER_CIDR
bindAddress: 0.0.0.0
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
iptables: {minSyncPeriod: 1s, syncPeriod: 30s}
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# containerd (with every image imported), kubelet and kube-proxy on node $1.
node_daemons_up() {
    local node=$1 dir
    dir=$(node_dir "$node")
    containerd_config "$node" >"$dir/etc/containerd.toml"
    kubelet_config "$node" >"$dir/etc/kubelet.yaml"
    kube_proxy_config "$node" >"$dir/etc/kube-proxy.yaml"
    start_node_daemon "$node-containerd" "$node" containerd --config "$dir/etc/containerd.toml"
    wait_until 60 ctr --address "$(node_socket "$node")" version
    local archive
    for archive in $(image_archives); do
        ctr --address "$(node_socket "$node")" -n k8s.io images import --no-unpack=false "$archive" >/dev/null
    done
    start_node_daemon "$node-kubelet" "$node" "$K8S_BIN/kubelet" --config="$dir/etc/kubelet.yaml" \
        --kubeconfig="$PKI/kubelet-$node.kubeconfig" --root-dir="$dir/kubelet" \
        --hostname-override="$node" --node-ip="$(node_ip "$node")"
    start_node_daemon "$node-kube-proxy" "$node" "$K8S_BIN/kube-proxy" --config="$dir/etc/kube-proxy.yaml"
}

cluster_up() {
    mkdir -p "$K8S_RUN/ns" "$K8S_RUN/pids" "$K8S_STATE" "$K8S_LOGS"
    # unshare --mount=FILE needs the file on a private mount.
    mount --bind "$K8S_RUN/ns" "$K8S_RUN/ns"
    mount --make-private "$K8S_RUN/ns"
    make_pki
    network_up
    control_plane_up
    local node
    for node in $K8S_NODES; do
        node_host_up "$node"
        node_daemons_up "$node"
    done
    wait_until 120 nodes_registered
}

# Routes from the control plane's host to every Node's podCIDR via that node's address. In
# a real cluster the API server runs on a node of the cluster network and reaches pods
# directly; its proxy to pods and Services (/api/v1/.../pods/NAME/proxy, which
# Kubernetes' conformance tests use) needs that. Here the control plane is a host of its
# own, so it gets the routes a host-gw peer would have. Fails if a Node has no podCIDR yet.
control_plane_routes_to_pods() {
    local routes node cidr
    routes=$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDR}{"\n"}{end}')
    [ "$(echo "$routes" | awk 'NF == 2' | wc -l)" -eq "$(echo "$K8S_NODES" | wc -w)" ] || return 1
    while read -r node cidr; do
        ip -n "$CP_NS" route replace "$cidr" via "$(node_ip "$node")"
    done <<<"$routes"
}

nodes_registered() {
    [ "$(kubectl get nodes -o name 2>/dev/null | wc -l)" -eq 3 ]
}

# Whether process $1 is one the tier started (its command line names the tier's files).
ours() {
    local cmdline
    cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    case $cmdline in *"$K8S_STATE"* | *"$K8S_RUN"* | *"$K8S_BIN"*) return 0 ;; *) return 1 ;; esac
}

# Kills every process in the cgroups under $1 (a kubelet's cgroup root), in every
# hierarchy, then removes the cgroups deepest first.
kill_cgroup_tree() {
    local root=$1 hierarchy pids
    for _ in 1 2 3; do
        pids=$(find /sys/fs/cgroup/pids/"$root" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u || true)
        [ -n "$pids" ] || break
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 1
    done
    for hierarchy in /sys/fs/cgroup/*/; do
        [ -d "$hierarchy$root" ] || continue
        find "$hierarchy$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
}

# Stops everything the tier started and removes what it made, also after a failure
# halfway. Bounded: each step gives up after a few seconds.
cluster_down() {
    # Every step is tried whatever the others did (options restored on return).
    local -
    set +e
    local file pid
    # Daemons first (kubelet before containerd, so no pod is restarted), then the pods'
    # processes (containerd's shims outlive it) by their cgroups.
    for file in "$K8S_RUN"/pids/*-kube-proxy "$K8S_RUN"/pids/*-kubelet "$K8S_RUN"/pids/*-containerd \
        "$K8S_RUN"/pids/kube-* "$K8S_RUN"/pids/etcd; do
        [ -f "$file" ] || continue
        pid=$(cat "$file")
        rm -f "$file"
        # A pid file an earlier run left may name a process that is no longer ours.
        ours "$pid" || continue
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    local node
    for node in $K8S_NODES; do
        # Shims (containerd-shim-runc-v2) are not in a kubelet cgroup: find them by the
        # node's state directory on their command line.
        pkill -KILL -f "containerd-shim-runc-v2 .*-address $K8S_RUN/$node/" 2>/dev/null || true
        kill_cgroup_tree "weft-k8s-$node"
    done
    # The node mount namespaces hold every mount the nodes made (pod volumes, pod network
    # namespaces, overlay mounts): freeing them frees all of those.
    for file in "$K8S_RUN"/ns/*.mnt "$K8S_RUN"/ns/*.uts; do
        [ -e "$file" ] && umount "$file" 2>/dev/null
    done
    mountpoint -q "$K8S_RUN/ns" && umount "$K8S_RUN/ns"
    # containerd made the pods' network namespaces in the nodes' mount namespaces, as
    # bind mounts on files in /run/netns; the files stay, empty, once those are gone.
    # (Only when this cluster had nodes: the scale tier has none, and runs beside this one.)
    for file in /run/netns/cni-*; do
        [ -n "$K8S_NODES" ] || break
        [ -e "$file" ] && ! mountpoint -q "$file" && rm -f "$file"
    done
    for node in $K8S_NODES "$CP_NS" "$SWITCH_NS"; do
        ip netns del "$node" 2>/dev/null || true
    done
    # The host directories made as mount points, if still empty.
    if [ -f "$K8S_RUN/host-dirs-made" ]; then
        sort -r "$K8S_RUN/host-dirs-made" | while read -r dir; do rmdir "$dir" 2>/dev/null; done
    fi
    # Only once nothing is mounted under them (test-rig.md §9: never rm -rf over mounts).
    local dir
    for dir in "$K8S_STATE" "$K8S_RUN"; do
        if findmnt -rn -o TARGET | grep -q "^$dir"; then
            echo "k8s-test.sh: mounts left under $dir, not removing it:" >&2
            findmnt -rn -o TARGET | grep "^$dir" >&2
        else
            rm -rf "$dir"
        fi
    done
}

# What the tier might have left behind: processes, mounts, namespaces, cgroups. Prints
# them and fails if there is any.
leftovers() {
    local found=0
    # Without nodes (scripts/k8s-scale.sh) the binaries' path is no mark: a cluster of
    # this tier may run the same binaries beside it.
    pgrep -fa "$K8S_STATE|$K8S_RUN${K8S_NODES:+|$K8S_BIN}" && found=1
    findmnt -rn -o TARGET | grep -E "^($K8S_STATE|$K8S_RUN)" && found=1
    ip netns list | grep -E "$K8S_NETNS_PATTERN" && found=1
    ls -d /sys/fs/cgroup/*/weft-k8s-* 2>/dev/null && found=1
    return $((1 - found))
}

# Sourced by scripts/k8s-test.sh once the cluster is up: installs weft with its chart and
# runs the checks (each through `check NAME COMMAND...`, which prints PASS or FAIL).

RELEASE=weft
NAMESPACE=kube-flannel
WEFT_LABEL=app.kubernetes.io/name=weft
TEST_NS=net-test
# The nodes still in the cluster (one is deleted halfway); the teardown still takes all.
LIVE_NODES=$K8S_NODES

helm_weft() {
    ip netns exec "$CP_NS" "$HELM" --kubeconfig "$PKI/admin.kubeconfig" "$@"
}

# The values a user sets for this cluster: the controller manager's cluster CIDR, the
# locally built image (no registry: never pulled), and flannel's NetworkPolicy sidecar with
# the locally built kube-network-policies (the chart has no pull policy for it: Kubernetes'
# default for a tag other than latest, IfNotPresent, and every node has it imported).
helm_values() {
    cat <<EOF
podCidr: "$CLUSTER_CIDR"
flannel:
  backend: "$1"
netpol:
  enabled: true
  image:
    repository: $NETPOL_IMAGE_REPOSITORY
    tag: $NETPOL_IMAGE_TAG
weft:
  image:
    repository: $WEFT_IMAGE_REPOSITORY
    tag: $WEFT_IMAGE_TAG
    pullPolicy: Never
EOF
}

weft_pods_ready() {
    local want=${1:-3}
    [ "$(kubectl -n "$NAMESPACE" get pods -l "$WEFT_LABEL" \
        -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
        grep -c True)" -eq "$want" ]
}

# The test workload: agnhost netexec (HTTP on 8080: /hostname, /clientip) on every node.
test_workload() {
    cat <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $TEST_NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: netexec, namespace: $TEST_NS}
spec:
  replicas: $1
  selector: {matchLabels: {app: netexec}}
  template:
    metadata: {labels: {app: netexec}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
           labelSelector: {matchLabels: {app: netexec}}}
      containers:
        - name: netexec
          image: $TEST_IMAGE
          imagePullPolicy: Never
          args: ["netexec", "--http-port=8080"]
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: netexec, namespace: $TEST_NS}
spec:
  selector: {app: netexec}
  ports: [{port: 80, targetPort: 8080}]
EOF
}

# "name ip node" per running netexec pod that is not being deleted.
test_pods() {
    kubectl -n "$TEST_NS" get pods -l app=netexec --field-selector=status.phase=Running \
        -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName} {.metadata.deletionTimestamp}{"\n"}{end}' |
        awk 'NF == 3'
}

# Waits until exactly $1 test pods run, on the live nodes only.
test_pods_settled() {
    local pods
    pods=$(test_pods)
    [ "$(echo "$pods" | grep -c .)" -eq "$1" ] || return 1
    echo "$pods" | awk '{ print $3 }' | while read -r node; do
        case " $LIVE_NODES " in *" $node "*) ;; *) return 1 ;; esac
    done
}

in_pod() { kubectl -n "$TEST_NS" exec "$1" -- "${@:2}"; }

# An HTTP GET of /$5 on $3:$4 made by the netexec server in the pod at $2, which runs on
# node $1 (agnhost's /dial, as Kubernetes' own e2e tests do: the connection is the
# pod's), asked from that node; prints the answer's body. busybox's wget cannot do it: a
# static glibc binary crashes looking up even an address through NSS.
dial() {
    innode "$1" curl -s -m 10 \
        "http://$2:8080/dial?request=$5&host=$3&port=$4&protocol=http&tries=1" |
        python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin).get("responses") or []))'
}

# As dial, asking for /hostname, but prints agnhost's answer as one line: "answered NAME"
# or "failed ERROR" (the connection from the pod failed); fails only when agnhost itself
# did not answer.
dial_outcome() {
    innode "$1" curl -s -m 10 \
        "http://$2:8080/dial?request=hostname&host=$3&port=8080&protocol=http&tries=1" |
        python3 -c '
import json, sys
answer = json.load(sys.stdin)
responses = answer.get("responses") or []
print("answered " + responses[0] if responses else "failed " + "; ".join(answer.get("errors") or []))'
}

# The pod "name ip node" of pod $1 (NAME) or of the test pod on node $1.
netpol_pod() { test_pods | awk -v n="$1" '$1 == n || $3 == n { print; exit }'; }

# netpol_answers CLIENT-NAME CLIENT-IP CLIENT-NODE SERVER-NAME SERVER-IP: whether the
# client pod connects to the server pod (the server's name answers).
netpol_answers() { [ "$(dial_outcome "$3" "$2" "$5")" = "answered $4" ]; }

# As netpol_answers: whether the client's connection to the server fails (while agnhost in
# the client answers).
netpol_refused() {
    case $(dial_outcome "$3" "$2" "$5") in "failed "*) return 0 ;; *) return 1 ;; esac
}

# kube-network-policies, the chart's sidecar (netpol.enabled): its container runs and is
# ready in weft's pod on every node, and its nftables table (inet kube-network-policies)
# is in every node's network namespace: its rules were accepted by the kernel.
check_netpol_sidecar() {
    local ok=0 node state
    for node in $LIVE_NODES; do
        state=$(kubectl -n "$NAMESPACE" get pods -l "$WEFT_LABEL" --field-selector "spec.nodeName=$node" \
            -o jsonpath='{range .items[*].status.containerStatuses[?(@.name=="kube-network-policies")]}{.image} ready={.ready} restarts={.restartCount} running={.state.running.startedAt}{end}')
        echo "  $node: ${state:-no kube-network-policies container}"
        case $state in *"ready=true"*"running="[0-9]*) ;; *) ok=1 ;; esac
        if ! innode "$node" nft list table inet kube-network-policies >/dev/null 2>&1; then
            echo "  $node: no nftables table inet kube-network-policies"
            ok=1
        fi
    done
    return $ok
}

# The NetworkPolicy checks' pods, "name ip node" each: the server, on wk-n1, which the
# policies select (label netpol-test=server); the client on wk-n3 (labelled
# netpol-client=allowed for the second policy); the other pod on wk-n2, which no policy
# selects, and which is the unlabelled client for the second policy.
NETPOL_SERVER=""
NETPOL_CLIENT=""
NETPOL_OTHER=""

netpol_deny_all() {
    cat <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: $TEST_NS}
spec:
  podSelector: {matchLabels: {netpol-test: server}}
  policyTypes: [Ingress]
EOF
}

netpol_allow_labelled() {
    cat <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-labelled-clients, namespace: $TEST_NS}
spec:
  podSelector: {matchLabels: {netpol-test: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {netpol-client: allowed}}}]
EOF
}

# A NetworkPolicy denying all ingress to the server: the client on another node cannot
# connect to it (within 30 s of the policy, and still not on a second try), while it still
# connects to the pod no policy selects, and did connect to the server just before.
check_netpol_deny() {
    NETPOL_SERVER=$(netpol_pod wk-n1)
    NETPOL_OTHER=$(netpol_pod wk-n2)
    NETPOL_CLIENT=$(netpol_pod wk-n3)
    local client server other
    read -ra client <<<"$NETPOL_CLIENT"
    read -ra server <<<"$NETPOL_SERVER"
    read -ra other <<<"$NETPOL_OTHER"
    if [ ${#client[@]} -ne 3 ] || [ ${#server[@]} -ne 3 ] || [ ${#other[@]} -ne 3 ]; then
        echo "  not one test pod on each of wk-n1, wk-n2, wk-n3: $(test_pods | tr '\n' ';')"
        return 1
    fi
    echo "  server ${server[*]}; client ${client[*]}; other ${other[*]}"
    netpol_answers "${client[@]}" "${server[0]}" "${server[1]}" ||
        { echo "  before any policy, the client does not reach the server"; return 1; }
    kubectl -n "$TEST_NS" label pod "${server[0]}" netpol-test=server >/dev/null || return 1
    netpol_deny_all | kubectl apply -f - >/dev/null || return 1
    local started=$SECONDS ok=0
    if wait_until 30 netpol_refused "${client[@]}" "${server[0]}" "${server[1]}"; then
        echo "  refused $((SECONDS - started)) s after the policy: $(dial_outcome "${client[2]}" "${client[1]}" "${server[1]}")"
        netpol_refused "${client[@]}" "${server[0]}" "${server[1]}" ||
            { echo "  the second try got through"; ok=1; }
    else
        echo "  the client still reaches the server 30 s after the policy"
        ok=1
    fi
    netpol_answers "${client[@]}" "${other[0]}" "${other[1]}" ||
        { echo "  the client no longer reaches the pod no policy selects: $(dial_outcome "${client[2]}" "${client[1]}" "${other[1]}")"; ok=1; }
    return $ok
}

# "accept=N drop=M": the verdicts the sidecar on node $1 gave (its packet_count metric, on
# its metrics port 9080 in the node's network namespace).
netpol_verdicts() {
    innode "$1" curl -s -m 5 http://127.0.0.1:9080/metrics | awk '
        /^kube_network_policies_packet_count\{/ {
            if ($0 ~ /verdict="accept"/) accept += $NF
            if ($0 ~ /verdict="drop"/) drop += $NF
        }
        END { printf "accept=%d drop=%d\n", accept, drop }'
}

# A second NetworkPolicy allowing ingress to the server from pods labelled
# netpol-client=allowed: the client, so labelled, connects (within 30 s); the other pod,
# unlabelled, is still refused. The server's node's sidecar counted both verdicts: the
# refusals were its drops, the labelled client's connection its accept.
check_netpol_allow_labelled() {
    local client server other ok=0
    read -ra client <<<"$NETPOL_CLIENT"
    read -ra server <<<"$NETPOL_SERVER"
    read -ra other <<<"$NETPOL_OTHER"
    [ ${#client[@]} -eq 3 ] || { echo "  the deny check chose no pods"; return 1; }
    netpol_allow_labelled | kubectl apply -f - >/dev/null || return 1
    kubectl -n "$TEST_NS" label pod "${client[0]}" netpol-client=allowed >/dev/null || return 1
    local started=$SECONDS
    if wait_until 30 netpol_answers "${client[@]}" "${server[0]}" "${server[1]}"; then
        echo "  the labelled client (${client[2]}) connects, $((SECONDS - started)) s after its label"
    else
        echo "  the labelled client is still refused 30 s after its label"
        ok=1
    fi
    if netpol_refused "${other[@]}" "${server[0]}" "${server[1]}"; then
        echo "  the unlabelled pod (${other[2]}) is refused: $(dial_outcome "${other[2]}" "${other[1]}" "${server[1]}")"
    else
        echo "  the unlabelled pod gets through: $(dial_outcome "${other[2]}" "${other[1]}" "${server[1]}")"
        ok=1
    fi
    local verdicts
    verdicts=$(netpol_verdicts "${server[2]}")
    echo "  the sidecar on ${server[2]} gave the verdicts $verdicts"
    case $verdicts in "accept="[1-9]*" drop="[1-9]*) ;; *) ok=1 ;; esac
    return $ok
}

# Both policies and the labels removed: the server answers both clients again (within
# 30 s), and no pod address is left in any node's set of policed pods.
check_netpol_removed() {
    local client server other ok=0 node set
    read -ra client <<<"$NETPOL_CLIENT"
    read -ra server <<<"$NETPOL_SERVER"
    read -ra other <<<"$NETPOL_OTHER"
    kubectl -n "$TEST_NS" delete networkpolicy deny-ingress allow-labelled-clients --ignore-not-found >/dev/null || ok=1
    [ ${#client[@]} -eq 3 ] || { echo "  the deny check chose no pods"; return 1; }
    kubectl -n "$TEST_NS" label pod "${server[0]}" netpol-test- >/dev/null || ok=1
    kubectl -n "$TEST_NS" label pod "${client[0]}" netpol-client- >/dev/null || ok=1
    wait_until 30 netpol_answers "${other[@]}" "${server[0]}" "${server[1]}" ||
        { echo "  the other pod is still refused"; ok=1; }
    netpol_answers "${client[@]}" "${server[0]}" "${server[1]}" || { echo "  the client is refused"; ok=1; }
    for node in $LIVE_NODES; do
        set=$(innode "$node" nft list set inet kube-network-policies podips-v4 2>&1)
        case $set in *elements*) echo "  $node still polices: $set"; ok=1 ;; esac
    done
    return $ok
}

check_nodes_ready_with_weft() {
    local node ok=0 conditions
    for node in $LIVE_NODES; do
        conditions=$(kubectl get node "$node" -o jsonpath='{range .status.conditions[*]}{.type}={.status}/{.reason} {end}')
        case $conditions in *Ready=True/KubeletReady*) ;; *) echo "  $node: $conditions"; ok=1 ;; esac
        case $conditions in *NetworkUnavailable=False/FlannelIsUp*) ;; *) echo "  $node: NetworkUnavailable not set by weft: $conditions"; ok=1 ;; esac
    done
    return $ok
}

check_annotations() {
    local node ok=0 annotations key
    for node in $LIVE_NODES; do
        annotations=$(kubectl get node "$node" -o jsonpath='{.metadata.annotations}')
        for key in backend-type backend-data public-ip kube-subnet-manager; do
            case $annotations in *"\"flannel.alpha.coreos.com/$key\""*) ;; *) echo "  $node lacks flannel.alpha.coreos.com/$key"; ok=1 ;; esac
        done
        case $annotations in *"\"flannel.alpha.coreos.com/public-ip\":\"$(node_ip "$node")\""*) ;;
            *) echo "  $node: public-ip is not $(node_ip "$node"): $annotations"; ok=1 ;; esac
    done
    return $ok
}

check_subnet_env() {
    local node ok=0 pod_cidr text
    for node in $LIVE_NODES; do
        pod_cidr=$(kubectl get node "$node" -o jsonpath='{.spec.podCIDR}')
        text=$(innode "$node" cat /run/flannel/subnet.env)
        case $text in *"FLANNEL_SUBNET=${pod_cidr%.0/24}.1/24"*) ;; *) echo "  $node ($pod_cidr): $text"; ok=1 ;; esac
    done
    return $ok
}

# Every pod pings every other pod and fetches /clientip from it: the answer must be the
# client pod's own address (no NAT between pods).
check_pod_to_pod() {
    local ok=0 from from_ip from_node to to_ip to_node seen
    while read -r from from_ip from_node; do
        while read -r to to_ip to_node; do
            [ "$from" = "$to" ] && continue
            if ! in_pod "$from" ping -c 2 -W 2 "$to_ip" >/dev/null; then
                echo "  ping $from ($from_node) -> $to_ip ($to_node) failed"
                ok=1
            fi
            seen=$(dial "$from_node" "$from_ip" "$to_ip" 8080 clientip || true)
            if [ "${seen%:*}" != "$from_ip" ]; then
                echo "  $from ($from_ip, $from_node) -> $to_ip ($to_node): server saw '$seen'"
                ok=1
            fi
        done < <(test_pods)
    done < <(test_pods)
    return $ok
}

check_node_to_pod_and_back() {
    local ok=0 node pod pod_ip pod_node
    while read -r pod pod_ip pod_node; do
        for node in $LIVE_NODES; do
            [ "$(innode "$node" curl -s -m 5 "http://$pod_ip:8080/hostname")" = "$pod" ] ||
                { echo "  $node -> $pod ($pod_ip) failed"; ok=1; }
            # pod -> node: kube-proxy's health port on every node address.
            case $(dial "$pod_node" "$pod_ip" "$(node_ip "$node")" 10256 healthz) in *'"healthy":true'*) ;;
                *) echo "  $pod ($pod_node) -> $node failed"; ok=1 ;; esac
        done
    done < <(test_pods)
    return $ok
}

install_coredns() {
    sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|" -e "s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|" \
        scripts/k8s/coredns.yaml | kubectl apply -f - >/dev/null
    kubectl -n kube-system rollout status deployment coredns --timeout=120s
}

# The Service by name, through CoreDNS, from a pod on every node.
check_service_by_name() {
    local ok=0 pod pod_ip pod_node answer
    while read -r pod pod_ip pod_node; do
        answer=$(dial "$pod_node" "$pod_ip" "netexec.$TEST_NS.svc.cluster.local" 80 hostname || true)
        case $answer in netexec-*) ;; *) echo "  $pod ($pod_node): '$answer'"; ok=1 ;; esac
    done < <(test_pods)
    return $ok
}

# From one pod, the Service's ClusterIP answers from pods on the other nodes too.
check_cluster_ip() {
    local pod pod_ip pod_node service hostnames i
    read -r pod pod_ip pod_node < <(test_pods | head -1)
    service=$(kubectl -n "$TEST_NS" get service netexec -o jsonpath='{.spec.clusterIP}')
    hostnames=$(for i in $(seq 30); do dial "$pod_node" "$pod_ip" "$service" 80 hostname; done | sort | uniq -c)
    echo "  from $pod ($pod_node) to $service: $(echo "$hostnames" | tr '\n' ' ')"
    [ "$(echo "$hostnames" | grep -c netexec)" -eq 3 ]
}

# 10 pings a second for $3 seconds from pod $1 to address $2 during "$@" (the action):
# prints the loss and fails unless nothing was lost, the action succeeded, and the pings
# lasted past its end (so the daemon's start after it was pinged too).
ping_during() {
    local summary
    summary=$(ping_loss_during "$@") || { echo "$summary" >&2; return 1; }
    echo "$summary" >&2
    case $summary in *" 0% packet loss"*) return 0 ;; *) return 1 ;; esac
}

# As ping_during, but the loss is only reported (a backend change cannot be lossless:
# between two nodes' turns of the rolling update one speaks vxlan, the other host-gw).
report_loss_during() {
    local summary
    summary=$(ping_loss_during "$@")
    local status=$?
    echo "$summary" >&2
    return $status
}

# Prints ping's summary; fails if the action failed or outlasted the pings.
ping_loss_during() {
    local from=$1 to_ip=$2 seconds=$3
    shift 3
    local log
    log=$(mktemp)
    in_pod "$from" ping -i 0.1 -c $((seconds * 10)) -W 1 "$to_ip" >"$log" 2>&1 &
    local pinger=$! started=$SECONDS action=0
    "$@" || action=$?
    local took=$((SECONDS - started))
    wait "$pinger" || true
    echo "  $(grep -E "packets transmitted" "$log" || echo "no ping summary: $(tail -3 "$log")")"
    rm -f "$log"
    if [ "$action" -ne 0 ]; then
        echo "  the action ($*) failed: status $action"
        return 1
    fi
    if [ "$took" -ge "$seconds" ]; then
        echo "  the action took ${took}s, longer than the ${seconds}s of pings"
        return 1
    fi
    echo "  the action took ${took}s"
}

# Two pods on different nodes: "from-pod to-ip" (the second on $1's node if given).
pod_pair() {
    local pods
    pods=$(test_pods)
    local to
    if [ -n "${1:-}" ]; then
        to=$(echo "$pods" | awk -v n="$1" '$3 == n { print $2; exit }')
        echo "$pods" | awk -v n="$1" -v to="$to" '$3 != n { print $1 " " to; exit }'
    else
        echo "$pods" | awk 'NR == 1 { to = $2; next } { print $1 " " to; exit }'
    fi
}

# Deletes weft's pod on node $1 and waits for its replacement to be Ready.
restart_weft_on() {
    local old
    old=$(kubectl -n "$NAMESPACE" get pods -l "$WEFT_LABEL" --field-selector "spec.nodeName=$1" -o name)
    [ "$(echo "$old" | grep -c .)" -eq 1 ] || { echo "  weft's pod on $1: '$old'"; return 1; }
    kubectl -n "$NAMESPACE" delete "$old" --wait=true >/dev/null || return 1
    wait_until 120 weft_pods_ready 3 || return 1
    local new
    new=$(kubectl -n "$NAMESPACE" get pods -l "$WEFT_LABEL" --field-selector "spec.nodeName=$1" -o name)
    [ -n "$new" ] && [ "$new" != "$old" ] || { echo "  not recreated: '$new'"; return 1; }
    sleep 2
}

upgrade_to_host_gw() {
    helm_values host-gw >"$K8S_STATE/values-host-gw.yaml"
    helm_weft upgrade "$RELEASE" charts/weft -n "$NAMESPACE" -f "$K8S_STATE/values-host-gw.yaml" >/dev/null &&
        kubectl -n "$NAMESPACE" rollout status daemonset/kube-flannel-ds --timeout=300s >/dev/null &&
        sleep 3
}

check_host_gw_in_place() {
    local ok=0 node routes
    for node in $LIVE_NODES; do
        if innode "$node" ip link show flannel.1 >/dev/null 2>&1; then
            echo "  $node still has flannel.1"
            ok=1
        fi
        routes=$(innode "$node" ip -4 route show proto 91)
        # One route per peer node, through the peer's own address.
        [ "$(echo "$routes" | grep -c " via 198.18.0.1[0-9] dev eth0")" -eq $(($(echo $LIVE_NODES | wc -w) - 1)) ] ||
            { echo "  $node routes: $routes"; ok=1; }
    done
    return $ok
}

# Node $1's kubelet stopped and its Node deleted: the others drop its route (and FDB and
# neighbour entries on vxlan).
check_deleted_node_forgotten() {
    local gone=$1 subnet node ok=0
    subnet=$(kubectl get node "$gone" -o jsonpath='{.spec.podCIDR}')
    kill "$(cat "$K8S_RUN/pids/$gone-kubelet")"
    rm -f "$K8S_RUN/pids/$gone-kubelet"
    kubectl delete node "$gone" --wait=true >/dev/null
    for node in $LIVE_NODES; do
        [ "$node" = "$gone" ] && continue
        if ! wait_until 30 sh -c "! nsenter --net=/run/netns/$node ip route show $subnet | grep -q ." ; then
            echo "  $node still routes $subnet"
            ok=1
        fi
        if innode "$node" bridge fdb show dev flannel.1 | grep -q "dst $(node_ip "$gone")"; then
            echo "  $node still has an FDB entry for $(node_ip "$gone")"
            ok=1
        fi
    done
    return $ok
}

check_metrics() {
    local node ok=0 text
    for node in $LIVE_NODES; do
        text=$(innode "$node" curl -s -m 5 "http://$(node_ip "$node"):8081/metrics")
        case $text in *$'\nweft_ready 1\n'*) ;; *) echo "  $node: /metrics lacks weft_ready 1"; ok=1 ;; esac
    done
    return $ok
}

# After `helm uninstall`: weft's pods are gone; what weft put on the nodes stays (as with
# flannel: the device, routes, subnet.env, the CNI plugin and config), and pods keep
# talking over it.
check_uninstall_leaves_the_datapath() {
    local ok=0 node
    wait_until 120 sh -c "[ -z \"\$(ip netns exec $CP_NS $K8S_BIN/kubectl --kubeconfig $PKI/admin.kubeconfig -n $NAMESPACE get pods -l $WEFT_LABEL -o name)\" ]" ||
        { echo "  weft's pods are still there"; ok=1; }
    for node in $1; do
        innode "$node" test -f /run/flannel/subnet.env || { echo "  $node: subnet.env gone"; ok=1; }
        innode "$node" test -f /opt/cni/bin/flannel || { echo "  $node: the CNI plugin is gone"; ok=1; }
        [ -n "$(innode "$node" ip -4 route show proto 91)" ] || { echo "  $node: routes gone"; ok=1; }
    done
    local from to_ip
    read -r from to_ip < <(pod_pair)
    in_pod "$from" ping -c 3 -W 2 "$to_ip" >/dev/null || { echo "  pods no longer talk"; ok=1; }
    return $ok
}

# 30 pods: from the Deployment's scale-up to all Running, and each pod's sandbox start
# (CNI ADD included) from kubelet's run_podsandbox histogram.
measure_pod_startup() {
    local step=$SECONDS
    kubectl -n "$TEST_NS" scale deployment netexec --replicas=30 >/dev/null
    kubectl -n "$TEST_NS" rollout status deployment netexec --timeout=300s >/dev/null
    timing "30 pods from scale-up to all Ready" $((SECONDS - step))
    kubectl -n "$TEST_NS" get pods -l app=netexec -o json | python3 -c '
import json, sys
from datetime import datetime
pods = json.load(sys.stdin)["items"]
parse = lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ")
waits = sorted((parse(c["lastTransitionTime"]) - parse(p["metadata"]["creationTimestamp"])).total_seconds()
               for p in pods for c in p["status"]["conditions"] if c["type"] == "Ready" and c["status"] == "True")
if waits:
    q = lambda f: waits[min(len(waits) - 1, int(round(f * (len(waits) - 1))))]
    print("TIME pod created -> Ready, %d pods: p50 %.0f s, p99 %.0f s, max %.0f s (1 s resolution)" % (len(waits), q(0.5), q(0.99), waits[-1]))'
    sandbox_times
    kubectl -n "$TEST_NS" scale deployment netexec --replicas=3 >/dev/null
    wait_until 120 test_pods_settled 3
}

# Each test pod's sandbox start, from containerd's RunPodSandbox request to its answer
# (the pause container and the CNI ADD through weft's plugin, bridge and host-local), from
# the nodes' containerd logs.
sandbox_times() {
    cat "$K8S_LOGS"/*-containerd.log | python3 -c '
import re, sys
from datetime import datetime
started, took = {}, []
pattern = re.compile(r"time=\"([^\"]+)\".*RunPodSandbox for &PodSandboxMetadata\{Name:(netexec-[^,]+),[^}]*\}( returns sandbox id)?")
for line in sys.stdin:
    m = pattern.search(line)
    if not m:
        continue
    when = datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f")
    if m.group(3):
        if m.group(2) in started:
            took.append((when - started.pop(m.group(2))).total_seconds() * 1000)
    else:
        started[m.group(2)] = when
took.sort()
if took:
    q = lambda f: took[min(len(took) - 1, int(round(f * (len(took) - 1))))]
    print("TIME pod sandbox incl. CNI ADD, %d pods: p50 %.0f ms, p99 %.0f ms, max %.0f ms" % (len(took), q(0.5), q(0.99), took[-1]))'
}

# `helm install` of charts/weft with the tier's values (kube mode, vxlan); a PASS/FAIL line
# for every weft pod Ready, and its time.
install_weft() {
    echo "== helm install weft (kube mode, vxlan, image $WEFT_IMAGE_REPOSITORY:$WEFT_IMAGE_TAG)"
    helm_values vxlan >"$K8S_STATE/values.yaml"
    local step=$SECONDS
    kubectl create namespace "$NAMESPACE" >/dev/null
    helm_weft install "$RELEASE" charts/weft -n "$NAMESPACE" -f "$K8S_STATE/values.yaml" >/dev/null
    check "every weft pod Ready" wait_until 300 weft_pods_ready 3
    timing "helm install -> all weft pods Ready" $((SECONDS - step))
}

run_checks() {
    install_weft
    check "every Node Ready, NetworkUnavailable=False set by weft (FlannelIsUp)" \
        wait_until 120 check_nodes_ready_with_weft
    check "weft's annotations on every Node, public-ip the node's address" check_annotations
    check "subnet.env on every node names the Node's podCIDR" check_subnet_env

    test_workload 3 | kubectl apply -f - >/dev/null
    check "a Deployment with a pod on every node is Ready" \
        kubectl -n "$TEST_NS" rollout status deployment netexec --timeout=180s
    test_pods | sed 's/^/  /'
    check "every pod reaches every other pod (ping, TCP) and the server sees the client's own IP" \
        check_pod_to_pod
    check "every node reaches every pod, every pod every node" check_node_to_pod_and_back
    check "a ClusterIP Service answers from the pods on every node" check_cluster_ip
    check "CoreDNS runs (a Deployment on weft's network)" install_coredns
    check "the Service by name (CoreDNS) from a pod on every node" check_service_by_name
    check "each weft pod's /metrics on its node's address says weft_ready 1" check_metrics

    step=$SECONDS
    check "the NetworkPolicy sidecar (kube-network-policies) runs in weft's pod on every node, its nftables table in place" \
        check_netpol_sidecar
    check "NetworkPolicy denying all ingress to the pod on wk-n1: the pod on wk-n3 cannot connect to it, still can to wk-n2's" \
        check_netpol_deny
    check "NetworkPolicy allowing ingress from label netpol-client=allowed: the labelled pod connects, the unlabelled one is refused" \
        check_netpol_allow_labelled
    check "NetworkPolicies deleted: the pod on wk-n1 answers both pods again, no node polices a pod" \
        check_netpol_removed
    timing "the four NetworkPolicy checks" $((SECONDS - step))

    local from to_ip
    read -r from to_ip < <(pod_pair wk-n1)
    check "weft's pod on wk-n1 deleted under 10 pings/s to a pod there: recreated, 0 lost" \
        ping_during "$from" "$to_ip" 60 restart_weft_on wk-n1

    measure_pod_startup

    check "wk-n3's kubelet stopped and its Node deleted: the others drop its route and FDB entry" \
        check_deleted_node_forgotten wk-n3
    LIVE_NODES="wk-n1 wk-n2"
    # Its test pod is replaced on the others.
    wait_until 120 test_pods_settled 3

    read -r from to_ip < <(pod_pair wk-n1)
    check "helm upgrade to host-gw rolls out, under 10 pings/s across nodes (loss reported)" \
        report_loss_during "$from" "$to_ip" 120 upgrade_to_host_gw
    check "after the upgrade: flannel.1 gone, host-gw routes via the peer's address" \
        check_host_gw_in_place
    check "pods still reach each other on host-gw" check_pod_to_pod

    helm_weft uninstall "$RELEASE" -n "$NAMESPACE" >/dev/null
    check "helm uninstall: weft's pods gone; subnet.env, CNI plugin and routes stay; pods still talk" \
        check_uninstall_leaves_the_datapath "$LIVE_NODES"
}

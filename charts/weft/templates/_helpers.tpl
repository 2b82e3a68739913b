{{/*
Labels. The selector is flannel's (`app: flannel`), and the objects carry flannel's
names, so that `helm upgrade` of a flannel release to this chart, or `kubectl apply` of
weft's manifest over flannel's, replaces flannel node by node (a DaemonSet's selector
cannot change).
*/}}
{{- define "weft.selectorLabels" -}}
app: flannel
{{- end -}}

{{/*
What the PodMonitor selects weftd's pods by: the DaemonSet's selector narrowed to this
chart and release (labels every weftd pod carries), so that flannel's own pods (during a
migration) or another release's are not selected.
*/}}
{{- define "weft.podMonitorSelectorLabels" -}}
{{ include "weft.selectorLabels" . }}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "weft.labels" -}}
tier: node
app: flannel
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "weft.image" -}}
{{ .Values.weft.image.repository }}:{{ .Values.weft.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
net-conf.json, as flannel's chart builds it from the values: Network or
EnableIPv4=false, IPv6Network + EnableIPv6, EnableNFTables, and the Backend with the
keys of its type (vxlan: Port, VNI, GBP, DirectRouting, MTU and MacPrefix, each only when
set; wireguard: ListenPort, ListenPortV6, PSK, MTU, Mode and PersistentKeepaliveInterval,
each only when set; host-gw: Type only). flannel's wireguard values are not rendered for
vxlan or host-gw, in flannel's chart neither. Built as a dict, so it is always valid JSON
(flannel's chart writes Mode unquoted, which no JSON parser reads).
*/}}
{{- define "weft.netConf" -}}
{{- $f := .Values.flannel -}}
{{- $conf := dict "EnableNFTables" (default false $f.enableNFTables) -}}
{{- if .Values.podCidr -}}
{{- $_ := set $conf "Network" .Values.podCidr -}}
{{- else -}}
{{- $_ := set $conf "EnableIPv4" false -}}
{{- end -}}
{{- if .Values.podCidrv6 -}}
{{- $_ := set $conf "IPv6Network" .Values.podCidrv6 -}}
{{- $_ := set $conf "EnableIPv6" true -}}
{{- end -}}
{{- $backend := dict "Type" $f.backend -}}
{{- if eq $f.backend "vxlan" -}}
{{- if $f.backendPort }}{{ $_ := set $backend "Port" (int $f.backendPort) }}{{ end -}}
{{- if $f.vni }}{{ $_ := set $backend "VNI" (int $f.vni) }}{{ end -}}
{{- if $f.GBP }}{{ $_ := set $backend "GBP" true }}{{ end -}}
{{- if $f.directRouting }}{{ $_ := set $backend "DirectRouting" true }}{{ end -}}
{{- if $f.mtu }}{{ $_ := set $backend "MTU" (int $f.mtu) }}{{ end -}}
{{- if $f.macPrefix }}{{ $_ := set $backend "MacPrefix" $f.macPrefix }}{{ end -}}
{{- else if eq $f.backend "wireguard" -}}
{{- if $f.backendPort }}{{ $_ := set $backend "ListenPort" (int $f.backendPort) }}{{ end -}}
{{- if $f.backendPortv6 }}{{ $_ := set $backend "ListenPortV6" (int $f.backendPortv6) }}{{ end -}}
{{- if $f.psk }}{{ $_ := set $backend "PSK" (toString $f.psk) }}{{ end -}}
{{- if $f.mtu }}{{ $_ := set $backend "MTU" (int $f.mtu) }}{{ end -}}
{{- if $f.tunnelMode }}{{ $_ := set $backend "Mode" $f.tunnelMode }}{{ end -}}
{{- if $f.keepaliveInterval }}{{ $_ := set $backend "PersistentKeepaliveInterval" (int $f.keepaliveInterval) }}{{ end -}}
{{- end -}}
{{- $_ := set $conf "Backend" $backend -}}
{{- toPrettyJson $conf -}}
{{- end -}}

{{/*
weftd's arguments: flannel.args (without --kube-subnet-mgr in etcd mode), then
--healthz-port, then the etcd flags. One YAML list.
*/}}
{{- define "weft.args" -}}
{{- $etcd := .Values.weft.etcd -}}
{{- $args := list -}}
{{- range .Values.flannel.args -}}
{{- if not (and $etcd.enabled (regexMatch "^--?kube-subnet-mgr(=(true|1|yes|on))?$" .)) -}}
{{- $args = append $args . -}}
{{- end -}}
{{- end -}}
{{- if .Values.flannel.healthz.port -}}
{{- $args = append $args (printf "--healthz-port=%d" (int .Values.flannel.healthz.port)) -}}
{{- end -}}
{{- if $etcd.enabled -}}
{{- $args = append $args (printf "--etcd-endpoints=%s" (join "," $etcd.endpoints)) -}}
{{- $args = append $args (printf "--etcd-prefix=%s" $etcd.prefix) -}}
{{- if $etcd.tlsSecretName -}}
{{- $args = append $args "--etcd-cafile=/etc/weft/etcd/ca.crt" -}}
{{- $args = append $args "--etcd-certfile=/etc/weft/etcd/tls.crt" -}}
{{- $args = append $args "--etcd-keyfile=/etc/weft/etcd/tls.key" -}}
{{- end -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/*
Checks the schema cannot express with a clear message. Each `fail` names the value.
*/}}
{{- define "weft.validate" -}}
{{- $backend := .Values.flannel.backend -}}
{{- if has $backend (list "udp" "ipip" "ipsec" "alloc" "extension" "tencent-vpc") -}}
{{- fail (printf "flannel.backend: weft does not implement flannel's %s backend; set flannel.backend to vxlan, host-gw or wireguard" $backend) -}}
{{- else if not (has $backend (list "vxlan" "host-gw" "wireguard")) -}}
{{- fail (printf "flannel.backend: %q is not a backend; set flannel.backend to vxlan, host-gw or wireguard" $backend) -}}
{{- end -}}
{{- if and (eq $backend "wireguard") .Values.flannel.tunnelMode (not (has .Values.flannel.tunnelMode (list "separate" "auto" "ipv4" "ipv6"))) -}}
{{- fail (printf "flannel.tunnelMode: %q is not a mode; set it to separate, auto, ipv4 or ipv6" .Values.flannel.tunnelMode) -}}
{{- end -}}
{{- if and (not .Values.podCidr) (not .Values.podCidrv6) -}}
{{- fail "podCidr and podCidrv6 are both empty: set podCidr (IPv4), podCidrv6 (IPv6) or both" -}}
{{- end -}}
{{- $conf := fromJson .Values.flannel.cniConf -}}
{{- if hasKey $conf "Error" -}}
{{- fail (printf "flannel.cniConf is not valid JSON: %s" $conf.Error) -}}
{{- end -}}
{{- if not (kindIs "slice" $conf.plugins) -}}
{{- fail "flannel.cniConf must be a CNI conflist: an object with a \"plugins\" list" -}}
{{- end -}}
{{- $metrics := .Values.weft.metrics -}}
{{- if not .Values.flannel.healthz.port -}}
{{- if $metrics.podAnnotations -}}
{{- fail "weft.metrics.podAnnotations needs flannel.healthz.port: weftd serves /metrics on its health server, which port 0 turns off" -}}
{{- end -}}
{{- if $metrics.podMonitor.enabled -}}
{{- fail "weft.metrics.podMonitor.enabled needs flannel.healthz.port: weftd serves /metrics on its health server, which port 0 turns off" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.netpol.enabled .Values.weft.etcd.enabled -}}
{{- fail "netpol.enabled needs the Kubernetes API, which weft.etcd.enabled takes away from weftd's pods (no ServiceAccount token, no ClusterRole); turn one of them off" -}}
{{- end -}}
{{- if not .Values.weft.etcd.enabled -}}
{{- $kube := false -}}
{{- range .Values.flannel.args -}}
{{- if regexMatch "^--?kube-subnet-mgr(=(true|1|yes|on))?$" . }}{{ $kube = true }}{{ end -}}
{{- end -}}
{{- if not $kube -}}
{{- fail "flannel.args has no --kube-subnet-mgr and weft.etcd.enabled is false: weftd would look for etcd at 127.0.0.1. Add --kube-subnet-mgr to flannel.args, or enable weft.etcd" -}}
{{- end -}}
{{- end -}}
{{- end -}}

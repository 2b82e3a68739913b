#!/usr/bin/env bash
# Generates deploy/weft.yaml, the plain manifest for `kubectl apply -f`, from the chart
# with its default values (release `weft`, namespace kube-flannel), after the Namespace
# object (labelled for the privileged Pod Security level that hostNetwork and hostPath
# need, as flannel's manifest does). tests/chart.rs fails when the file is out of date.
#
#   ./scripts/gen-manifest.sh            # rewrites deploy/weft.yaml
#   ./scripts/gen-manifest.sh -          # prints it instead
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(./scripts/chart-tools.sh)"
render() {
    cat <<'HEADER'
# weft: generated from charts/weft with its default values by scripts/gen-manifest.sh.
# Do not edit; change the chart and run the script again.
#   kubectl apply -f deploy/weft.yaml
---
kind: Namespace
apiVersion: v1
metadata:
  name: kube-flannel
  labels:
    k8s-app: flannel
    pod-security.kubernetes.io/enforce: privileged
HEADER
    "$HELM" template weft charts/weft --namespace kube-flannel
}
if [ "${1:-}" = "-" ]; then
    render
else
    render > deploy/weft.yaml.tmp
    mv deploy/weft.yaml.tmp deploy/weft.yaml
fi

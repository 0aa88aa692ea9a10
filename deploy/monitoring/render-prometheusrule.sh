#!/usr/bin/env bash
# Prints the PrometheusRule for the Prometheus Operator: alerts.yml, unchanged, as its spec.
# alerts.yml is the one source; deploy/validate.sh fails if the committed file differs:
#   bash deploy/monitoring/render-prometheusrule.sh > deploy/monitoring/prometheus-operator/prometheusrule.yaml
set -euo pipefail
cd "$(dirname "$0")"

cat <<'HEADER'
# GENERATED from deploy/monitoring/alerts.yml by deploy/monitoring/render-prometheusrule.sh:
# edit alerts.yml, then render again. Same rules as `promtool test rules` checks.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: contact-sync
  labels:
    app.kubernetes.io/name: contact-sync
    app.kubernetes.io/part-of: contact-sync
    # Prometheus loads only rules its `ruleSelector` matches: with kube-prometheus-stack add
    # `release: <its release name>` here (kustomize `labels:` does it without editing).
spec:
HEADER
# Indent every line under `spec:`; blank lines stay blank.
sed -e 's/^\(.\)/  \1/' alerts.yml

#!/bin/sh
# One Kubernetes Secret per participant, each from its own kit (never the CA key).
# Usage: deploy/helm/kit-secrets.sh deploy/helm/pki [release]
set -eu
pki=$1; release=${2:-fedhe}
for kit in "$pki"/kits/*/; do
  id=$(basename "$kit")
  [ -f "$kit/$id.key" ] || continue
  kubectl create secret generic "$release-$id-kit" \
    --from-file=tls.crt="$kit/$id.crt" --from-file=tls.key="$kit/$id.key" \
    --from-file=ca.crt="$kit/ca.crt"
done

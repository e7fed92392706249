#!/usr/bin/env bash
# Checks the rendered operator manifests carry one image setting: the image the operator
# runs is the one it gives the ledger and migrations (TALLY_IMAGE), pinned, not :latest.
set -euo pipefail
kustomize=$1
out=$("$kustomize" build "$(dirname "$0")/../config/default")
image=$(awk '/^        image: /{print $2; exit}' <<<"$out")
env=$(awk '/name: TALLY_IMAGE/{getline; print $2; exit}' <<<"$out")
[[ -n $image && $image == "$env" ]] || { echo "operator image $image but TALLY_IMAGE $env" >&2; exit 1; }
[[ $image != *:latest && $image == *[:@]* ]] || { echo "operator image $image is not pinned by tag or digest" >&2; exit 1; }

#!/usr/bin/env bash
# Builds the container images of the local e2e cluster from files (no registry, no Docker
# engine here) and imports them into its containerd:
#   pause            Kubernetes' own pause.c (it reaps children: the instance pods share a
#                    process namespace), compiled static from the k8s.io/kubernetes module.
#   tally            the one Tally binary, static, as the Dockerfile builds it.
#   tally-postgres   Debian bookworm (debootstrap, minbase) with Debian's PostgreSQL 15 and
#                    redis-server (the e2e's managed Redis runs it too); the postgres user
#                    has uid 999, as the operator's pods run it.
# Each image is written as a docker-archive tarball that `ctr images import` reads.
# Usage: hack/local-images.sh <containerd socket, or "" to build only> <tally image>
#        <postgres image> <pause image> [which: "pause postgres tally" by default]
set -euo pipefail

SOCK=$1 TALLY_IMAGE=$2 POSTGRES_IMAGE=$3 PAUSE_IMAGE=$4
K8S_VERSION=${K8S_VERSION:-1.37.2}
CACHE=${TALLY_CACHE:-$HOME/.cache/tally}
IMAGES=$CACHE/images
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$IMAGES"
log() { echo "hack/local-images.sh: $*" >&2; }

# archive <dir> <tag> <out.tar> [entrypoint json] [user]: a one-layer docker-archive.
archive() {
  local dir=$1 tag=$2 out=$3 entry=${4:-null} user=${5:-}
  local work layer diff cfg
  work=$(mktemp -d)
  tar --numeric-owner --sort=name --mtime=@0 -C "$dir" -cf "$work/layer.tar" .
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"User":"%s","Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entry" "$user" "$diff" >"$work/config.json"
  cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$cfg" "$tag" >"$work/manifest.json"
  tar -C "$work" -cf "$out.tmp" manifest.json "$cfg.json" layer.tar
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

# import <tar>: into the cluster's containerd, unless only building (no socket given)
import() { [[ -z $SOCK ]] || ctr --address "$SOCK" -n k8s.io images import "$1" >/dev/null; }

pause_image() {
  local out=$IMAGES/pause-$K8S_VERSION.tar
  if [[ ! -s $out ]]; then
    local src work
    src=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c
    work=$(mktemp -d)
    mkdir -p "$work/root"
    gcc -Os -static -Wall -DVERSION="v$K8S_VERSION-tally" -o "$work/root/pause" "$src"
    archive "$work/root" "$PAUSE_IMAGE" "$out" '["/pause"]' 65535:65535
    rm -rf "$work"
  fi
  import "$out"
}

tally_image() {
  local work
  work=$(mktemp -d)
  mkdir -p "$work/root/tmp"
  chmod 1777 "$work/root/tmp"
  (cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/root/tally" .)
  cp "$work/root/tally" "$IMAGES/tally" # the e2e runs the same binary on the host
  archive "$work/root" "$TALLY_IMAGE" "$work/tally.tar" '["/tally"]' 65532:65532
  import "$work/tally.tar"
  rm -rf "$work"
}

postgres_image() {
  local out=$IMAGES/postgres-15-redis-bookworm.tar
  if [[ ! -s $out ]]; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    local work
    work=$(mktemp -d)
    log "building the PostgreSQL (and Redis) image from Debian's packages (a few minutes, once)"
    # uid 999 first, so the package's postinst adopts it instead of picking its own
    debootstrap --variant=minbase --include=postgresql-15,redis-server,procps,iproute2 bookworm "$work/root" \
      http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
      { tail -20 "$work/debootstrap.log"; exit 1; }
    local uid gid
    uid=$(chroot "$work/root" id -u postgres) gid=$(chroot "$work/root" id -g postgres)
    if [[ $uid != 999 ]]; then
      sed -i "s/^postgres:x:$uid:$gid:/postgres:x:999:999:/" "$work/root/etc/passwd"
      sed -i "s/^postgres:x:$gid:/postgres:x:999:/" "$work/root/etc/group"
      chroot "$work/root" find / -xdev \( -uid "$uid" -o -gid "$gid" \) -exec chown -h 999:999 {} +
    fi
    # the cluster the package made is not the operator's: the instance manager runs initdb
    rm -rf "$work/root/var/lib/postgresql/15" "$work/root/etc/postgresql/15" \
      "$work/root/var/cache/apt/archives"/*.deb "$work/root/var/lib/apt/lists"/*
    archive "$work/root" "$POSTGRES_IMAGE" "$out" null 999:999
    rm -rf "$work"
  fi
  import "$out"
}

for which in ${5:-pause postgres tally}; do "${which}_image"; done
[[ -z $SOCK ]] || log "imported $PAUSE_IMAGE, $POSTGRES_IMAGE and $TALLY_IMAGE"

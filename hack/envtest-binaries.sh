#!/usr/bin/env bash
# Builds the Kubernetes binaries (kube-apiserver and etcd for envtest; kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy and kubectl for the local cluster of `make e2e-local`)
# from sources the Go module proxy serves, because release downloads are not reachable here,
# and caches them. Prints the directory that holds them; use it as KUBEBUILDER_ASSETS.
#
# Kubernetes: a throwaway module requires k8s.io/kubernetes vX.Y.Z and replaces every
# k8s.io/<staging> module it lists with v0.Y.Z; one `go build` of all six commands shares the
# compiled packages (about 15 minutes on 2 cores, then cached).
# etcd: Debian's etcd-server package when apt has it (seconds), else a tiny main around
# go.etcd.io/etcd/server/v3/etcdmain (about 4 minutes).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
CACHE=${TALLY_CACHE:-$HOME/.cache/tally}
OUT=$CACHE/k8s-$K8S_VERSION
COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
mkdir -p "$OUT"
log() { echo "hack/envtest-binaries.sh: $*" >&2; }

build_kubernetes() {
  local work minor
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  minor=${K8S_VERSION#1.}
  log "building ${COMMANDS[*]} v$K8S_VERSION from the module proxy (about 15 minutes, once)"
  (
    cd "$work"
    printf 'module envtestbuild\n\ngo 1.26\n\nrequire k8s.io/kubernetes v%s\n' "$K8S_VERSION" >go.mod
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    # every staging module kubernetes replaces with a local path, we replace with its release
    grep -oE '^\s*k8s.io/[A-Za-z0-9._-]+ => \./staging' "$gomod" | awk '{print $1}' | sort -u |
      while read -r m; do printf 'replace %s => %s v0.%s\n' "$m" "$m" "$minor" >>go.mod; done
    local pkgs=() c
    for c in "${COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    go get "${pkgs[@]/%/@v$K8S_VERSION}" >/dev/null
    local pkg=k8s.io/component-base/version
    mkdir -p bin
    go build -trimpath -o bin/ -ldflags "-s -w \
      -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*} \
      -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z \
      -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION" \
      "${pkgs[@]}"
    for c in "${COMMANDS[@]}"; do mv "bin/$c" "$OUT/$c"; done
  )
}

etcd_from_debian() {
  command -v apt-get >/dev/null || return 1
  local work deb
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  (cd "$work" && (apt-get download etcd-server >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get download etcd-server >/dev/null 2>&1; })) || return 1
  deb=$(ls "$work"/etcd-server_*.deb 2>/dev/null | head -1)
  [[ -n $deb ]] || return 1
  dpkg-deb -x "$deb" "$work/x"
  local bin
  bin=$work/x/usr/bin/etcd
  [[ -x $bin ]] || return 1
  cp "$bin" "$OUT/etcd.tmp" && mv "$OUT/etcd.tmp" "$OUT/etcd"
}

build_etcd() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "building etcd v$ETCD_VERSION from the module proxy (about 4 minutes, once)"
  (
    cd "$work"
    printf 'module etcdbuild\n\ngo 1.26\n' >go.mod
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' >main.go
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null
    go mod tidy >/dev/null
    go build -trimpath -o "$OUT/etcd.tmp" . && mv "$OUT/etcd.tmp" "$OUT/etcd"
  )
}

for c in "${COMMANDS[@]}"; do
  [[ -x $OUT/$c ]] || { build_kubernetes; break; }
done
[[ -x $OUT/etcd ]] || etcd_from_debian || build_etcd
echo "$OUT"

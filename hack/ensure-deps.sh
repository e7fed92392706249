#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine: PostgreSQL server binaries and
# redis-server (the tests start their own servers; none is used as a service), curl (the
# dev-script test) and wrk (the load generator of tally bench).
set -euo pipefail

have_pg() {
  local dir
  if dir=$(pg_config --bindir 2>/dev/null) && [[ -x $dir/initdb && -x $dir/postgres ]]; then
    return 0
  fi
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
have_pg || missing+=(postgresql)
command -v curl >/dev/null || missing+=(curl)
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "hack/ensure-deps.sh: installing ${missing[*]} with apt" >&2
sudo=""
[[ $(id -u) -ne 0 ]] && sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# policy-rc.d keeps the packages from starting PostgreSQL and Redis services we do not use.
if [[ -z $sudo && ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
have_pg || { echo "hack/ensure-deps.sh: PostgreSQL server binaries still missing" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "hack/ensure-deps.sh: redis-server still missing" >&2; exit 1; }

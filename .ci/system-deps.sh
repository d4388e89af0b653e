#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, when they are missing: chromium for the
# real-browser test of the site, bubblewrap for the sandbox `qkv grade` runs learners' kernels in,
# and PostgreSQL's server (initdb, pg_ctl) for the tests that grade into a throw-away PostgreSQL gradebook.
# Safe to run again; does nothing when all are present.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "system-deps: need these Debian packages and cannot install them without root: ${missing[*]}" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq)
# A package install cut off half-way (a killed session, say) leaves dpkg "interrupted", and every later
# apt-get refuses to run until it is finished: finish it first.
$SUDO dpkg --configure -a
$SUDO "${apt[@]}" update
$SUDO "${apt[@]}" install --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null
echo "system-deps: installed ${missing[*]}"

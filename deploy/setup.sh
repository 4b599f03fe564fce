#!/usr/bin/env bash
# Installs everything xfrmctl needs on a fresh Debian 12 machine: the Debian packages
# (iproute2, strongSwan as the interop peer, the real kernel and qemu for the lab VM)
# and a virtualenv in .venv with the project and its development tools, and strongSwan
# 6.0.6 (the post-quantum interop peer, built from the public release) in /opt/strongswan6.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  iproute2 iputils-ping kmod tcpdump nftables procps
  linux-image-amd64 qemu-system-x86 busybox-static
  strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
  libstrongswan-standard-plugins
  postgresql
  freeradius  # the RADIUS server EAP pass-through is tested against (host tests start it)
  chromium curl
  ruby  # syntax check of the Vagrantfile (tests/ansible)
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  # strongSwan's, PostgreSQL's and FreeRADIUS's services must not run on the host: the tests start
  # their own instances inside network namespaces.
  systemctl disable --now strongswan-starter strongswan postgresql freeradius >/dev/null 2>&1 || true
fi

# strongSwan 6.0.6 beside Debian's 5.9.8 (RFC 9370 + ML-KEM interop): the tarball holds
# absolute paths under /opt/strongswan6. XFRMCTL_STRONGSWAN6_TARBALL overrides where it is.
SWAN6_TARBALL=${XFRMCTL_STRONGSWAN6_TARBALL:-../shared/peers/strongswan-6.0.6.tar.xz}
if [[ ! -x /opt/strongswan6/libexec/ipsec/charon ]]; then
  if [[ -f $SWAN6_TARBALL ]]; then
    echo "setup: unpacking strongSwan 6.0.6 to /opt/strongswan6"
    tar -xJf "$SWAN6_TARBALL" -C /
  else
    echo "setup: $SWAN6_TARBALL not found: the post-quantum interop tests will skip" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.xfrmctl-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing xfrmctl and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi
echo "setup: ready"

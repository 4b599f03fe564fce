#!/usr/bin/env bash
# `make demo`: two gateways, an IKEv2 tunnel between two xfrmctl daemons, a ping through
# the kernel's ESP, the SA table and the counters; then everything is removed again.
#
#   deploy/demo.sh            (as root, after deploy/setup.sh)
#
# The demo runs deploy/demo-guest. When this machine's kernel cannot do ESP (the build
# machines' cannot, see deploy/lab/README.md) it runs inside the lab VM (Debian's kernel
# under qemu, booted by deploy/lab/run: about a minute to boot, a few minutes in all);
# otherwise directly here, in seconds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

if ((EUID != 0)); then
  echo "demo: run as root (network namespaces, IPsec SAs)" >&2
  exit 1
fi

# Can this kernel hold an AES-GCM ESP SA? Try in a throw-away namespace.
kernel_has_esp() {
  local ns=xfrmdemo-probe rc=0
  ip netns add "$ns" 2>/dev/null || return 1
  modprobe -q esp4 2>/dev/null || true
  ip -n "$ns" xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 mode tunnel \
    aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128 \
    >/dev/null 2>&1 || rc=1
  ip netns del "$ns"
  return "$rc"
}

start=$(date +%s)
if kernel_has_esp; then
  echo "demo: this kernel has ESP: running on this machine"
  "$here/demo-guest" "$repo"
else
  echo "demo: this kernel has no ESP: booting the lab VM (Debian's kernel under qemu)"
  results=$(mktemp -d /tmp/xfrmctl-demo-results.XXXXXX)
  trap 'rm -rf "$results"' EXIT
  "$here/lab/run" --guest "$here/demo-guest" --results "$results" --timeout 1500
fi
echo "demo: finished in $(($(date +%s) - start)) s"

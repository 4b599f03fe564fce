# Shared by the commands that run inside the lab VM (sourced, not executed).
# shellcheck shell=bash

# Kernel modules the lab needs: ESP/AH, XFRM interfaces and VTI, UDP encapsulation,
# the AEAD/cipher templates the SAs use, and the links the tests create.
LAB_MODULES=(
  xfrm_user xfrm_algo esp4 esp6 ah4 ah6 xfrm4_tunnel xfrm6_tunnel tunnel4 tunnel6
  xfrm_interface ip_vti ip6_vti ipcomp ipcomp6
  aead authenc authencesn echainiv seqiv gcm ghash_generic ccm ctr cbc
  chacha20poly1305 chacha_generic poly1305_generic
  aes_generic sha1_generic sha256_generic sha512_generic hmac cmac xcbc
  af_alg algif_aead algif_hash algif_skcipher
  veth dummy
)

# lab_load_modules REPORT: modprobe each module, write "name ok|missing" lines to
# REPORT. A missing module is not fatal here: the tests probe what they need and skip
# with the reason.
lab_load_modules() {
  local report=$1 mod missing=() builtin kernel
  kernel=$(uname -r)
  builtin=/lib/modules/$kernel/modules.builtin
  # one modprobe for all: under TCG every process start costs
  modprobe -a -q "${LAB_MODULES[@]}" 2>/dev/null || true
  : >"$report"
  for mod in "${LAB_MODULES[@]}"; do
    if [[ -d /sys/module/$mod ]] || grep -q "/${mod//_/[_-]}\.ko" "$builtin" 2>/dev/null; then
      echo "$mod ok" >>"$report"
    else
      echo "$mod missing" >>"$report"
      missing+=("$mod")
    fi
  done
  if ((${#missing[@]})); then
    echo "lab: modules not loadable: ${missing[*]}"
  fi
}

# lab_env REPO RESULTS: the environment every lab command runs with.
lab_env() {
  export XFRMCTL_LAB=1
  export XFRMCTL_LAB_RESULTS=$2
  export PYTHONDONTWRITEBYTECODE=1
  export PYTHONUNBUFFERED=1
  # the repository is read-only in the VM: Hypothesis keeps its database in the
  # throw-away overlay instead of <repo>/.hypothesis
  export HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis
  export PYTHONPATH=$1${PYTHONPATH:+:$PYTHONPATH}
  export PATH=$1/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  ip link set lo up 2>/dev/null || true
}

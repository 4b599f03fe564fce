#!/usr/bin/env bash
# The whole test suite: lint, type check, unit and netns tests on the host kernel, then the
# lab tests (ESP, XFRM interfaces, strongSwan interop) inside the real-kernel VM.
# Any failure, including "no tests collected" (pytest exit 5), fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

step() { printf '\n=== %s ===\n' "$*"; }

step "ruff"
.venv/bin/ruff check .
step "mypy"
.venv/bin/mypy
step "import contracts (lint-imports: the layers in pyproject's [tool.importlinter])"
.venv/bin/lint-imports
step "host tests (unit + netns)"
# Side by side on every core (XFRMCTL_TEST_WORKERS=1: in turn); each module whole on one
# worker, as its daemons and namespaces are module fixtures.
workers=${XFRMCTL_TEST_WORKERS:-$(nproc)}
"$PY" -m pytest -m "not lab" -p no:cacheprovider -n "$workers" --dist loadfile
if [[ -x deploy/lab/run ]]; then
  step "lab tests (real kernel VM)"
  # Through a pipe: qemu reopens its stdout, and on a regular file it would write from
  # offset 0 over what the steps above printed. pipefail keeps the lab's exit status.
  deploy/lab/run | cat
fi

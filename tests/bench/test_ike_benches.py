"""Smoke test of the IKE benches (bench/ike_setups.py, bench/ike_memory.py): each runs
against both responders with a tiny N and prints its ratio line. Seconds on the host;
the real numbers come from running the benches by hand (see bench/README.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import strongswan

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    return strongswan.available()


@pytest.mark.parametrize(("script", "args", "ratio"), [
    ("ike_setups.py", ["-n", "30", "--warmup", "5", "--window", "8"],
     r"^RATIO setups/s xfrmctl/charon = \d+\.\d\d; per responder CPU-s = \d+\.\d\d$"),
    ("ike_memory.py", ["-n", "30", "--warmup", "5", "--window", "8"],
     r"^RATIO bytes per IKE_SA xfrmctl/charon = -?\d+\.\d\d"),
])
def test_bench_prints_ratio(script: str, args: list[str], ratio: str) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args],
                          capture_output=True, text=True, timeout=170, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(ratio, proc.stdout, re.MULTILINE), out
    assert re.search(r"^failed\s+0\s+0|IKE SAs set up\s+30\s+30", proc.stdout, re.MULTILINE), out

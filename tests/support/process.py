"""Stopping the daemons the tests start (charon, xfrmctl)."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM and wait up to `timeout`; SIGKILL if it is stuck. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode

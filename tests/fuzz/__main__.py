"""Long fuzzing runs: `python -m tests.fuzz [--minutes N] [TARGET ...]`.

Runs the targets of tests/fuzz/targets.py in turn, in batches of fresh random examples
(mutations of the seeds), until the time is up. A crash stops the run, prints the
target, the exception and the input (hex, shrunk by hypothesis): make it a case in
tests/fuzz/test_regressions.py, then fix it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback

from hypothesis import HealthCheck, given, settings

from tests.fuzz.mutate import mutated
from tests.fuzz.targets import TARGETS

BATCH = 500


def batch(name: str) -> bytes | None:
    """One batch of examples for `name`; the shrunk crashing input, or None."""
    target = TARGETS[name]
    seeds = target.seeds()
    crashed: list[bytes] = []

    @settings(max_examples=BATCH, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        try:
            target.run(data)
        except Exception:
            crashed[:] = [data]  # the last one is the shrunk one
            raise

    try:
        run()
    except Exception:
        traceback.print_exc()
        return crashed[0] if crashed else b""
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], metavar="TARGET",
                        help=f"default: all ({', '.join(TARGETS)})")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # pyroute2 logs every malformed attribute
    names = args.targets or list(TARGETS)
    deadline = time.monotonic() + args.minutes * 60
    runs = dict.fromkeys(names, 0)
    while time.monotonic() < deadline:
        for name in names:
            crash = batch(name)
            runs[name] += BATCH
            if crash is not None:
                print(f"\nCRASH in target {name}; input (hex):\n{crash.hex()}\n"
                      "Add it to tests/fuzz/test_regressions.py.", file=sys.stderr)
                return 1
            if time.monotonic() >= deadline:
                break
    print("no crash; examples per target: " + ", ".join(f"{n} {c}" for n, c in runs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory per IKE_SA as a responder: xfrmctl vs strongSwan's charon.

    sudo .venv/bin/python bench/ike_memory.py [-n 5000] [--window 64] [--only xfrmctl|charon]

Same namespaces, connection and load generator as ike_setups.py. Each responder first
gets `--warmup` setups (code paths and caches warm), then its RSS (/proc/PID/status
VmRSS) is read, N more IKE SAs are made and kept (no DPD, no rekeying, no deletes: the
load generator stays connected and answers the responder), the RSS is read again after
the responder has settled, and (after - before) / N is printed for each, with the ratio.
DESIGN.md's target: xfrmctl <= 1.5x charon per IKE_SA at 100k tunnels (-n 100000).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ESP_PROPOSAL,
    IKE_PROPOSAL,
    LoadGen,
    Phase,
    kernel_has_esp,
    machine,
    missing,
    ratio,
    rss_bytes,
    side_by_side,
    start_responder,
    topology,
)


@dataclass
class Memory:
    described: str
    before: int
    after: int
    phase: Phase
    alive: int  # IKE SAs the load generator still has up when `after` is read
    lost: dict[str, int]

    @property
    def per_sa(self) -> float:
        return (self.after - self.before) / max(self.phase.setups, 1)


async def settled_rss(pid: int, quiet: float, limit: float) -> int:
    """RSS once it has not changed for `quiet` seconds (or after `limit`); the event
    loop keeps serving the responder meanwhile."""
    last, since, deadline = rss_bytes(pid), time.monotonic(), time.monotonic() + limit
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        await asyncio.sleep(0.25)
        now = rss_bytes(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


async def measure(kind: str, workdir: Path, n: int, warmup: int, window: int,
                  timeout: float) -> Memory:
    with topology() as (init_ns, resp_ns), start_responder(kind, resp_ns, workdir) as resp:
        gen = LoadGen(init_ns, window, resp_ns)
        await gen.open()
        try:
            await gen.run(warmup, resp.pid, timeout)
            before = await settled_rss(resp.pid, 1.0, 10)
            phase = await gen.run(n, resp.pid, timeout)
            after = await settled_rss(resp.pid, 2.0, 30)
            if not resp.alive():
                raise RuntimeError(f"{kind} died during the run")
            alive = len(gen.alive)
            return Memory(resp.describe(), before, after, phase, alive,
                          dict(gen.ike_down_after_setup))
        finally:
            gen.close()


def report(results: dict[str, Memory], n: int, warmup: int, esp: bool) -> None:
    print(f"\nMemory per IKE_SA as responder: N={n} IKE SAs kept (after {warmup} warm-up), "
          f"PSK, IKE {IKE_PROPOSAL}, ESP {ESP_PROPOSAL}")
    for kind, mem in results.items():
        print(f"  {kind}: {mem.described}")
    print(f"  machine: {machine()}")
    if not esp:
        print("  kernel without ESP: no CHILD_SA survives on either responder (charon "
              "refuses it in IKE_AUTH, xfrmctl\n  deletes it after the failed install): "
              "this is memory per IKE_SA without a CHILD_SA.")
    x, c = results.get("xfrmctl"), results.get("charon")
    rows: list[tuple[str, str, str, str]] = []
    for label, fn, fmt, show in (
        ("RSS before, MiB", lambda m: m.before / 2**20, "{:.1f}", False),
        ("RSS after, MiB", lambda m: m.after / 2**20, "{:.1f}", False),
        ("IKE SAs set up", lambda m: m.phase.setups, "{:d}", False),
        ("IKE SAs up at the end (ours)", lambda m: m.alive, "{:d}", False),
        ("setups/s while filling", lambda m: m.phase.rate, "{:.0f}", True),
        ("bytes per IKE_SA", lambda m: m.per_sa, "{:.0f}", True),
    ):
        a, b = (fn(m) if m is not None else None for m in (x, c))  # type: ignore[no-untyped-call]
        rows.append((label, "-" if a is None else fmt.format(a),
                     "-" if b is None else fmt.format(b),
                     ratio(a, b) if show and a is not None and b is not None else ""))
    print(side_by_side(rows))
    for kind, mem in results.items():
        if mem.lost:
            print(f"  {kind}: IKE SAs closed during the run: {mem.lost}")
        if mem.phase.failed or mem.phase.timed_out:
            print(f"  {kind}: {mem.phase.failed} setups failed"
                  f"{' (TIMED OUT)' if mem.phase.timed_out else ''}: "
                  f"{dict(mem.phase.reasons)}")
    if x is not None and c is not None:
        print(f"RATIO bytes per IKE_SA xfrmctl/charon = {ratio(x.per_sa, c.per_sa)} "
              f"(target <= 1.5 at 100k)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="IKE SAs to keep (default 5000)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--window", type=int, default=64, help="setups in flight")
    parser.add_argument("--only", choices=["xfrmctl", "charon"])
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds to make the N SAs (default 60 + N/20)")
    parser.add_argument("--workdir", type=Path, help="keep logs and configs here")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"SKIP: {reason}")
        return 77
    timeout = args.timeout or 60 + args.n / 20
    kinds = [args.only] if args.only else ["xfrmctl", "charon"]
    esp = kernel_has_esp()
    results: dict[str, Memory] = {}
    with tempfile.TemporaryDirectory(prefix="ike-memory-") as tmp:
        for kind in kinds:
            mem = asyncio.run(measure(kind, args.workdir or Path(tmp), args.n, args.warmup,
                                      args.window, timeout))
            results[kind] = mem
            print(f"{kind}: {mem.per_sa:.0f} bytes per IKE_SA", flush=True)
    report(results, args.n, args.warmup, esp)
    return 0


if __name__ == "__main__":
    sys.exit(main())

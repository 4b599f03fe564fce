"""IKE_SA + CHILD_SA setups per second as a responder: xfrmctl vs strongSwan's charon.

    sudo .venv/bin/python bench/ike_setups.py [-n 2000] [--warmup 200] [--window 64]
                                              [--only xfrmctl|charon] [--rounds 1]

Two network namespaces joined by veth (192.0.2.1 initiator, 192.0.2.2 responder). The
load generator is our own sans-I/O IKE core as initiator (one IKE SA per setup, `window`
setups in flight) over a UDP socket in the initiator namespace; the responder is
`xfrmctl daemon` and then charon, one after the other, with the same connection (PSK,
aes128gcm16-prfsha256-x25519, ESP aes128gcm16-x25519). After `warmup` setups, N setups
are timed; printed side by side: setups/s, p50/p99 latency, the responder's CPU time per
setup (all its threads, from /proc) and the load generator's, and the ratios.

Both processes share this machine's cores with the load generator (one Python process):
"setups per responder CPU-second" is the rate each responder would reach with a core of
its own, and is the number to compare when the load generator is at 100 % of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    side_by_side,
    start_responder,
    topology,
)


async def measure(kind: str, workdir: Path, n: int, warmup: int, window: int,
                  timeout: float, profile: Path | None = None,
                  null_kernel: bool = False) -> tuple[str, Phase]:
    with topology() as (init_ns, resp_ns), \
            start_responder(kind, resp_ns, workdir, null_kernel=null_kernel) as resp:
        gen = LoadGen(init_ns, window, resp_ns)
        await gen.open()
        try:
            if warmup:
                await gen.run(warmup, resp.pid, timeout)
            with py_spy(resp.pid if kind == "xfrmctl" else None, profile):
                phase = await gen.run(n, resp.pid, timeout)
        finally:
            gen.close()
        return resp.describe(), phase


@contextmanager
def py_spy(pid: int | None, out: Path | None) -> Iterator[None]:
    """Sample the xfrmctl responder with py-spy (`pip install py-spy`) while measuring:
    a flame graph (.svg) or, for any other suffix, collapsed stacks."""
    if pid is None or out is None:
        yield
        return
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin")
    if spy is None:
        raise SystemExit("--profile needs py-spy (.venv/bin/pip install py-spy)")
    fmt = "flamegraph" if out.suffix == ".svg" else "raw"
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "250", "--format",
                             fmt, "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the timed phase starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def summary(kind: str, phases: list[Phase]) -> Phase:
    """The round with the median rate (the upper middle one for an even count; rounds
    alternate between the responders)."""
    ordered = sorted(phases, key=lambda p: p.rate)
    best = ordered[len(ordered) // 2]
    if len(phases) > 1:
        rates = ", ".join(f"{p.rate:.0f}" for p in phases)
        median = statistics.median(p.rate for p in phases)
        print(f"{kind}: setups/s per round {rates} (median {median:.0f})")
    return best


def report(results: dict[str, Phase], described: dict[str, str], n: int, warmup: int,
           window: int, esp: bool, null_kernel: bool) -> None:
    print(f"\nIKE_SA + CHILD_SA setups as responder: N={n} after {warmup} warm-up, "
          f"{window} in flight, PSK, IKE {IKE_PROPOSAL}, ESP {ESP_PROPOSAL}")
    for kind, text in described.items():
        print(f"  {kind}: {text}")
    print(f"  machine: {machine()}")
    if null_kernel:
        print("  xfrmctl with a null kernel: its CHILD_SA installs succeed at no cost, only "
              "its IKE work is measured;\n  charon keeps its real kernel (on a kernel "
              "without ESP it refuses the CHILD_SA with a notify).")
    elif not esp:
        print("  kernel without ESP: CHILD_SA installs fail on both responders. charon "
              "installs before it answers\n  (IKE_AUTH answer carries a child error "
              "notify); xfrmctl tries the install (policies, SA refused,\n  rolled back), "
              "answers with the SA payload and deletes the CHILD_SA (one INFORMATIONAL "
              "more). The IKE work compared "
              "(IKE_SA_INIT,\n  IKE_AUTH with PSK, CHILD_SA negotiation) is the same.")
    x, c = results.get("xfrmctl"), results.get("charon")

    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, fn: Callable[[Phase], float], fmt: str = "{:.0f}",
            better_ratio: bool = True) -> None:
        a, b = (fn(p) if p is not None else None for p in (x, c))
        rows.append((label, "-" if a is None else fmt.format(a),
                     "-" if b is None else fmt.format(b),
                     ratio(a, b) if a is not None and b is not None and better_ratio else ""))

    row("setups/s", lambda p: p.rate, "{:.1f}")
    row("p50 latency ms", lambda p: p.latency_ms(0.50), "{:.1f}")
    row("p99 latency ms", lambda p: p.latency_ms(0.99), "{:.1f}")
    row("responder CPU ms/setup", lambda p: 1000 * p.responder_cpu / max(p.setups, 1),
        "{:.3f}")
    row("setups per responder CPU-s", lambda p: p.setups / p.responder_cpu
        if p.responder_cpu else 0.0, "{:.0f}")
    row("load generator CPU %", lambda p: 100 * p.loadgen_cpu / p.seconds, "{:.0f}", False)
    row("setups with CHILD_SA", lambda p: p.child_ok, "{:d}", False)
    row("setups, child refused", lambda p: p.child_refused, "{:d}", False)
    row("failed", lambda p: p.failed, "{:d}", False)
    row("UDP drops at responder (rcvbuf)", lambda p: p.drops_responder, "{:d}", False)
    row("UDP drops at initiator (rcvbuf)", lambda p: p.drops_initiator, "{:d}", False)
    print(side_by_side(rows))
    for kind, phase in results.items():
        for reason, count in phase.reasons.most_common():
            print(f"  {kind}: {count} x {reason}")
        if phase.timed_out:
            print(f"  {kind}: TIMED OUT, counts are partial")
    if x is not None and c is not None:
        per_cpu = ratio(x.setups * c.responder_cpu, c.setups * x.responder_cpu)
        print(f"RATIO setups/s xfrmctl/charon = {ratio(x.rate, c.rate)}; "
              f"per responder CPU-s = {per_cpu}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="setups timed (default 2000)")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--window", type=int, default=64, help="setups in flight")
    parser.add_argument("--only", choices=["xfrmctl", "charon"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the responders this many times; report the median")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="per phase, seconds (default 60 + N/20)")
    parser.add_argument("--workdir", type=Path, help="keep logs and configs here")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="py-spy the xfrmctl responder during the timed phase: "
                        "FILE.svg flame graph, else collapsed stacks")
    parser.add_argument("--xfrmctl-kernel", choices=["netlink", "null"], default="netlink",
                        help="null: the xfrmctl daemon gets a kernel that accepts every "
                        "write at no cost (IKE work only; charon keeps its real kernel)")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"SKIP: {reason}")
        return 77
    timeout = args.timeout or 60 + args.n / 20
    kinds = [args.only] if args.only else ["xfrmctl", "charon"]
    esp = kernel_has_esp()
    phases: dict[str, list[Phase]] = {k: [] for k in kinds}
    described: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="ike-setups-") as tmp:
        workdir = args.workdir or Path(tmp)
        for _ in range(args.rounds):
            for kind in kinds:
                text, phase = asyncio.run(measure(kind, workdir, args.n, args.warmup,
                                                  args.window, timeout, args.profile,
                                                  args.xfrmctl_kernel == "null"))
                described[kind] = text
                phases[kind].append(phase)
                print(f"{kind}: {phase.rate:.1f} setups/s", flush=True)
    results = {k: summary(k, v) for k, v in phases.items()}
    report(results, described, args.n, args.warmup, args.window, esp,
           args.xfrmctl_kernel == "null")
    return 0


if __name__ == "__main__":
    sys.exit(main())

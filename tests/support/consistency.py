"""Does a kernel hold exactly what its daemon believes in? (no orphaned, no missing SA or policy)"""

from __future__ import annotations

from xfrmctl.daemon.controller import Controller
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.types import Proto, owns_reqid

SaKey = tuple[object, int, Proto]


def believed(ctrl: Controller) -> tuple[set[SaKey], set[object]]:
    """The SAs and policy keys the daemon's records say are in its kernel."""
    sas: set[SaKey] = {(sa.dst, sa.spi, sa.proto) for sa in ctrl._lingering}
    policies: set[object] = set()
    for child in ctrl.children.values():
        assert child.in_kernel, f"CHILD_SA {child.event.spi_in:08x} believed but not installed"
        for sa in (child.install.inbound,) + (() if child.outbound_pending else
                                              (child.install.outbound,)):
            sas.add((sa.dst, sa.spi, sa.proto))
        policies |= {p.key for p in child.install.policies}
    for record in ctrl.connections.values():
        policies |= {p.key for p in record.traps}
    return sas, policies


def in_kernel(kernel: FakeKernel) -> tuple[set[SaKey], set[object]]:
    sas = {(e.spec.dst, e.spec.spi, e.spec.proto) for e in kernel.sas.values()
           if not e.larval and owns_reqid(e.spec.reqid)}
    return sas, set(kernel.policies)


def mismatch(ctrl: Controller, kernel: FakeKernel) -> str:
    """'' when the kernel holds exactly what the daemon believes in, else the difference."""
    try:
        (want_sas, want_pol), (have_sas, have_pol) = believed(ctrl), in_kernel(kernel)
    except AssertionError as exc:
        return str(exc)
    parts = []
    if want_sas - have_sas:
        parts.append(f"missing SAs {sorted(s[1] for s in want_sas - have_sas)}")
    if have_sas - want_sas:
        parts.append(f"orphan SAs {sorted(s[1] for s in have_sas - want_sas)}")
    if want_pol != have_pol:
        parts.append(f"policies: missing {len(want_pol - have_pol)}, "
                     f"orphan {len(have_pol - want_pol)}")
    return "; ".join(parts)

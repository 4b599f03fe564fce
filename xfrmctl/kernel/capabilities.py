"""What the running kernel can do, each answer with its reason.

`probe()` tries the real thing in a throwaway network namespace: a policy over
NETLINK_XFRM, an ESP SA per algorithm family (after trying to load the modules),
an XFRM interface, a VTI device, the SA_DIR attribute. Tests skip on a missing
feature with `reason`; the daemon reports the same answers.
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from .netlink import NetlinkKernel
from .types import (
    REQID_MIN,
    Algorithm,
    Direction,
    KernelError,
    PolicySpec,
    SaDir,
    SaSpec,
    Selector,
    Template,
)

MODULES = (
    "xfrm_user", "esp4", "esp6", "ah4", "ah6", "xfrm_interface", "ip_vti", "ip6_vti",
    "gcm", "aesni_intel", "aes_generic", "chacha20poly1305", "seqiv", "echainiv",
    "authenc", "authencesn", "sha256_generic", "sha512_generic", "cbc",
)  # fmt: skip

# Probe SAs: one per algorithm family the lab tests use.
PROBE_ALGORITHMS: dict[str, dict[str, Algorithm]] = {
    "aes-gcm": {"aead": Algorithm("rfc4106(gcm(aes))", bytes(20), 128)},
    "chacha20-poly1305": {"aead": Algorithm("rfc7539esp(chacha20,poly1305)", bytes(36), 128)},
    "aes-cbc-hmac-sha256": {
        "crypt": Algorithm("cbc(aes)", bytes(16)),
        "auth": Algorithm("hmac(sha256)", bytes(32), 128),
    },
}


@dataclass(frozen=True)
class Feature:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Capabilities:
    xfrm_netlink: Feature
    esp: Feature
    algorithms: dict[str, Feature] = field(default_factory=dict)
    xfrm_interface: Feature = Feature(False, "not probed")
    vti: Feature = Feature(False, "not probed")
    sa_dir: Feature = Feature(False, "not probed")

    def algorithm(self, family: str) -> Feature:
        if not self.esp:
            return self.esp
        return self.algorithms.get(family, Feature(False, f"{family} not probed"))


async def _run(*argv: str) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        return 127, f"{argv[0]} not found"
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


async def load_modules() -> None:
    """Best effort: where modules exist (the lab VM) load what IPsec needs."""
    for module in MODULES:
        await _run("modprobe", "-q", module)


async def _link_feature(ns: str, kind: str, *args: str) -> Feature:
    code, out = await _run("ip", "-n", ns, "link", "add", f"probe-{kind}", "type", kind, *args)
    if code:
        return Feature(False, f"`ip link add type {kind}` failed: {out}")
    return Feature(True)


def _sa(spi: int, algos: dict[str, Algorithm], direction: SaDir = SaDir.NONE) -> SaSpec:
    return SaSpec(
        ip_address("192.0.2.1"), ip_address("192.0.2.2"), spi, REQID_MIN,
        direction=direction, **algos,  # type: ignore[arg-type]
    )  # fmt: skip


async def _sa_features(kernel: NetlinkKernel) -> tuple[Feature, dict[str, Feature], Feature]:
    algorithms: dict[str, Feature] = {}
    esp = Feature(False, "no algorithm worked")
    for spi, (family, algos) in enumerate(PROBE_ALGORITHMS.items(), start=0x100):
        try:
            await kernel.add_sa(_sa(spi, algos))
        except KernelError as exc:
            if exc.errno == errno.EPROTONOSUPPORT:
                reason = (
                    "kernel lacks ESP (CONFIG_INET_ESP): adding an ESP SA gives EPROTONOSUPPORT"
                )
                return Feature(False, reason), {}, Feature(False, reason)
            algorithms[family] = Feature(False, f"{family}: {exc}")
            continue
        algorithms[family] = Feature(True)
        esp = Feature(True)
    if not esp:
        return esp, algorithms, Feature(False, "no ESP SA could be added")
    sa = _sa(0x200, PROBE_ALGORITHMS["aes-gcm"], SaDir.IN)
    try:
        await kernel.add_sa(sa)
        back = await kernel.get_sa(sa.id)
    except KernelError as exc:
        return esp, algorithms, Feature(False, f"SA with XFRMA_SA_DIR: {exc}")
    if back.spec.direction != SaDir.IN:
        return esp, algorithms, Feature(False, "kernel ignores XFRMA_SA_DIR (before 6.10)")
    return esp, algorithms, Feature(True)


async def probe(load: bool = True) -> Capabilities:
    if os.geteuid() != 0:
        no = Feature(False, "not root: cannot create a network namespace to probe in")
        return Capabilities(no, no, {}, no, no, no)
    if load:
        await load_modules()
    ns = f"xfrmctl-probe-{uuid.uuid4().hex[:8]}"
    code, out = await _run("ip", "netns", "add", ns)
    if code:
        no = Feature(False, f"`ip netns add` failed: {out}")
        return Capabilities(no, no, {}, no, no, no)
    try:
        return await _probe_in(ns)
    finally:
        await _run("ip", "netns", "del", ns)


async def _probe_in(ns: str) -> Capabilities:
    try:
        kernel = await NetlinkKernel.open(ns, monitor=False)
    except OSError as exc:
        no = Feature(False, f"NETLINK_XFRM socket: {exc} (CONFIG_XFRM_USER off?)")
        return Capabilities(no, no, {}, no, no, no)
    try:
        any4 = Selector(ip_network("198.51.100.0/24"), ip_network("203.0.113.0/24"))
        await kernel.add_policy(PolicySpec(any4, Direction.OUT, (Template(REQID_MIN),)))
        netlink = Feature(True)
    except KernelError as exc:
        netlink = Feature(False, f"NEWPOLICY failed: {exc}")
    try:
        esp, algorithms, sa_dir = await _sa_features(kernel)
    finally:
        await kernel.close()
    xfrmi = await _link_feature(ns, "xfrm", "if_id", "7")
    vti = await _link_feature(ns, "vti", "local", "192.0.2.1", "remote", "192.0.2.2", "key", "7")
    return Capabilities(netlink, esp, algorithms, xfrmi, vti, sa_dir)


def kernel_reason(exc: KernelError) -> str:
    """A failed kernel write as one sentence: what to do first (a module to load, when
    that is why), then the kernel's own answer."""
    return f"{exc.hint} [{exc}]" if exc.hint else str(exc)


_cached: list[Capabilities] = []


async def capabilities() -> Capabilities:
    """`probe()` once per process."""
    if not _cached:
        _cached.append(await probe())
    return _cached[0]

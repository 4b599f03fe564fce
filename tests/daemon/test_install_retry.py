"""A failed kernel install: the child is down with the reason (an event says so, and what
to load when the kernel lacks ESP or an algorithm), and it is negotiated again with a
back-off that doubles until the kernel takes it."""

from __future__ import annotations

import asyncio
import errno
import ipaddress

import pytest

from tests.support.consistency import mismatch
from tests.support.gateways import make
from xfrmctl.daemon import controller
from xfrmctl.kernel.capabilities import kernel_reason
from xfrmctl.kernel.fake import FakeKernel
from xfrmctl.kernel.interface import Op, OpKind
from xfrmctl.kernel.modules import missing_support
from xfrmctl.kernel.types import Algorithm, Proto, SaSpec


def _events(ctrl: controller.Controller, kind: str) -> list[dict[str, object]]:
    seen: list[dict[str, object]] = []
    ctrl.event_listeners.append(lambda k, fields: seen.append(fields) if k == kind else None)
    return seen


async def test_failed_install_is_retried_with_back_off_until_it_goes_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller, "INSTALL_RETRY", 0.05)
    ka = FakeKernel(fail_on={OpKind.ADD_POLICY})
    gw = await make(start_a="none", kernels=(ka, FakeKernel()))
    failed = _events(gw.a, "ChildInstallFailed")
    (record,) = gw.a.connections.values()
    await gw.a.initiate(record.id)
    await gw.settle()
    assert failed and failed[0]["connection"] == "site-b" and failed[0]["child"] == "lan"
    assert "add policy" in str(failed[0]["reason"]) and "ENOMEM" in str(failed[0]["reason"])
    (down,) = gw.a.install_failures.values()  # the child is down, and why
    assert down.attempts == 1 and "ENOMEM" in down.reason
    await asyncio.sleep(0.5)
    await gw.settle()
    delays = [f["retry_in"] for f in failed]
    assert len(delays) >= 3 and delays[:3] == [0.05, 0.1, 0.2]  # doubling
    assert not gw.a.children and not ka.sas and not ka.policies  # nothing half-installed
    ka.fail_on.clear()  # the kernel takes it now
    await asyncio.sleep(1.0)
    await gw.settle()
    (child,) = gw.a.children.values()
    assert child.in_kernel and not gw.a.install_failures
    assert not mismatch(gw.a, ka) and not mismatch(gw.b, gw.kb)
    (peer,) = gw.b.children.values()
    assert peer.event.spi_out == child.event.spi_in
    await gw.a.stop()
    await gw.b.stop()


async def test_a_kernel_without_esp_says_which_module_is_missing() -> None:
    ka = FakeKernel(missing_protocols=frozenset({Proto.ESP}))
    gw = await make(start_a="none", kernels=(ka, FakeKernel()))
    failed = _events(gw.a, "ChildInstallFailed")
    (record,) = gw.a.connections.values()
    await gw.a.initiate(record.id)
    await gw.settle()
    reason = str(failed[0]["reason"])
    assert reason.startswith("the kernel has no ESP support: modprobe esp4 (CONFIG_INET_ESP)")
    assert "EPROTONOSUPPORT" in reason  # the kernel's own answer follows
    assert not ka.sas and not ka.policies and not gw.kb.sas
    await gw.a.stop()
    await gw.b.stop()


def _sa(dst: str, proto: Proto = Proto.ESP, **algs: Algorithm) -> SaSpec:
    src = "2001:db8::1" if ":" in dst else "192.0.2.1"
    return SaSpec(ipaddress.ip_address(src), ipaddress.ip_address(dst), 0xC0000001,
                  0x10000, proto, **algs)  # type: ignore[arg-type]


def test_missing_support_names_module_and_build_option() -> None:
    assert missing_support(_sa("2001:db8::2"), errno.EPROTONOSUPPORT) == \
        "the kernel has no ESP support: modprobe esp6 (CONFIG_INET6_ESP)"
    assert missing_support(_sa("192.0.2.2", Proto.AH), errno.EPROTONOSUPPORT) == \
        "the kernel has no AH support: modprobe ah4 (CONFIG_INET_AH)"
    chacha = _sa("192.0.2.2", aead=Algorithm("rfc7539esp(chacha20,poly1305)", bytes(36), 128))
    assert missing_support(chacha, errno.ENOSYS) == (
        "the kernel lacks rfc7539esp(chacha20,poly1305): modprobe chacha20poly1305 "
        "(CONFIG_CRYPTO_CHACHA20POLY1305; check /proc/crypto)")
    cbc = _sa("192.0.2.2", crypt=Algorithm("cbc(aes)", bytes(16)),
              auth=Algorithm("hmac(sha256)", bytes(32), 128))
    text = missing_support(cbc, errno.ENOSYS) or ""
    assert "modprobe cbc aes_generic sha256_generic authenc" in text
    assert missing_support(cbc, errno.EINVAL) is None
    error = Op(OpKind.ADD_SA, chacha).error(errno.ENOSYS)
    assert kernel_reason(error).startswith("the kernel lacks rfc7539esp")
    assert "ENOSYS" in kernel_reason(error)

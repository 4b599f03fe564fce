"""The collection's API client alone (module_utils/api.py, imported as Ansible loads it):
an API that accepts the connection but does not answer in time gives a sentence naming
the socket and the `timeout` option, never a module crash ("Module failed: timed out")."""

from __future__ import annotations

import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

API_UTILS = (Path(__file__).resolve().parents[2] / "deploy" / "ansible" / "ansible_collections"
             / "xfrmctl" / "ipsec" / "plugins" / "module_utils" / "api.py")


@pytest.fixture(scope="module")
def api_utils() -> ModuleType:
    pytest.importorskip("ansible", reason="ansible-core is not installed")
    spec = importlib.util.spec_from_file_location("xfrmctl_api_utils", API_UTILS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def silent_api(tmp_path: Path) -> Iterator[str]:
    """A unix socket that accepts and reads the request, then says nothing."""
    path = str(tmp_path / "api.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    held: list[socket.socket] = []
    thread = threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True)
    thread.start()
    try:
        yield path
    finally:
        for conn in held:
            conn.close()
        server.close()


def test_an_api_that_does_not_answer_in_time_is_a_clear_error(
        api_utils: ModuleType, silent_api: str) -> None:
    client = api_utils.Client(url=f"unix://{silent_api}", token="t", timeout=1)
    with pytest.raises(api_utils.ApiError) as caught:
        client.request("GET", "/secrets")
    message = str(caught.value)
    assert "did not answer within 1 seconds" in message, message
    assert silent_api in message and "timeout" in message, message

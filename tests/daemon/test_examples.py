"""Every example configuration validates, and a broken one is refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from xfrmctl.daemon import conf as cf

EXAMPLES = sorted((Path(__file__).parents[2] / "deploy" / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    conf = cf.load(path)
    assert conf.connections
    for connection in conf.connections.values():
        assert connection.children


def test_bad_proposal_names_the_field_and_keyword(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("connections:\n  x:\n    psk: k\n    ike_proposals: aes128-sha256-mdp2048\n"
                   "    children: {c: {}}\n")
    with pytest.raises(ValidationError) as info:
        cf.load(bad)
    text = str(info.value)
    assert "ike_proposals" in text and "'mdp2048'" in text


def test_secrets_are_not_in_the_validation_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("connections:\n  x:\n    psk: do-not-print-me\n    rekey_time: -1\n")
    with pytest.raises(ValidationError) as info:
        cf.load(bad)
    assert "rekey_time" in str(info.value) and "do-not-print-me" not in str(info.value)

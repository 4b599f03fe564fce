"""A short run of every fuzzing target (tests/fuzz/targets.py) in CI: a few seconds each,
the seeds first, then mutations of them. Long runs: `python -m tests.fuzz --minutes N`."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.mutate import mutated
from tests.fuzz.targets import TARGETS

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("XFRMCTL_FUZZ_EXAMPLES", "150"))
SHORT = settings(max_examples=EXAMPLES, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", list(TARGETS))
def test_seeds_pass(name: str) -> None:
    """Every seed is handled: the targets start from inputs that work."""
    target = TARGETS[name]
    for seed in target.seeds():
        target.run(seed)


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target(name: str) -> None:
    target = TARGETS[name]
    seeds = target.seeds()

    @SHORT
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        target.run(data)

    run()


def test_mutations_change_the_seeds() -> None:
    """The strategy does mutate (a fuzzer that only replays its seeds finds nothing)."""
    seeds = [bytes(range(64))]
    seen: set[bytes] = set()

    @settings(max_examples=60, database=None, deadline=None)
    @given(mutated(seeds), st.just(0))
    def collect(data: bytes, _: int) -> None:
        seen.add(data)

    collect()
    assert len(seen - set(seeds)) > 20

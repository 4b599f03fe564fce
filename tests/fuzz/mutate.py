"""Hypothesis strategies that mutate seed inputs (bit flips, overwrites, insertions,
deletions, truncation, splices of two seeds) or make fresh bytes."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

EDITS = ("flip", "set", "insert", "delete", "truncate", "splice", "dup")


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], max_edits: int = 8) -> bytes:
    if not seeds or draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=1024))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, max_edits))):
        edit = draw(st.sampled_from(EDITS))
        at = draw(st.integers(0, max(len(data), 1) - 1)) if data else 0
        if edit == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete" and data:
            del data[at: at + draw(st.integers(1, 16))]
        elif edit == "truncate":
            del data[at:]
        elif edit == "splice":
            other = draw(st.sampled_from(seeds))
            cut = draw(st.integers(0, len(other)))
            data[at:] = other[cut:]
        elif edit == "dup" and data:
            data[at:at] = data[at: at + draw(st.integers(1, 64))]
    return bytes(data)

"""Suite-wide settings.

Under CI (CI=true) hypothesis runs derandomized: the same examples every run, so a
submission's result does not depend on luck; developers' runs keep exploring new
examples (and XFRMCTL_FUZZ_EXAMPLES raises the count for long fuzzing runs).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

# One throwaway PostgreSQL server for the whole session (tests/support/postgres.py).
from tests.support.postgres import postgres_url  # noqa: E402

__all__ = ["postgres_url"]

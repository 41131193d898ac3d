"""The long run's byte-level targets (`targets.py`) on their seeds, and on a few short
random buffers: a target that breaks here would make `scripts/fuzz.sh` report a false
crash at its first input."""

from __future__ import annotations

import random

import pytest

from tests.fuzz.targets import TARGETS, seeds


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_runs_on_its_seeds_and_on_noise(name: str) -> None:
    rng = random.Random(13)
    target = TARGETS[name]
    for data in [*seeds(name), b"", *(rng.randbytes(n) for n in (1, 7, 64, 512))]:
        target(data)

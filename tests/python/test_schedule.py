"""Router temperature annealing: the cosine schedule of flashmoe/routing.h."""

import math

import numpy as np
import pytest

from conftest import linear_case
from flashmoe_science import TemperatureSchedule, annealed_temperature, fused_moe


def cosine(step, total, t0, t1):
    if total <= 0:
        return t1
    return t1 + (t0 - t1) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


@pytest.mark.parametrize("step", [0, 1, 250, 500, 999, 1000, 5000])
def test_schedule_values(step):
    sched = TemperatureSchedule(t_start=2.0, t_end=0.5, total_steps=1000)
    assert sched(step) == pytest.approx(cosine(step, 1000, 2.0, 0.5), rel=1e-12)


def test_schedule_endpoints_and_monotone():
    sched = TemperatureSchedule(3.0, 1.0, 100)
    assert sched(0) == pytest.approx(3.0) and sched(100) == pytest.approx(1.0)
    values = [sched(s) for s in range(0, 121)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert annealed_temperature(10, 0, 3.0, 1.0) == 1.0  # total_steps <= 0: t_end


def test_schedule_errors():
    with pytest.raises(ValueError, match="t_start must be a finite temperature > 0"):
        TemperatureSchedule(0.0, 1.0, 10)
    with pytest.raises(TypeError, match="total_steps must be an int"):
        TemperatureSchedule(2.0, 1.0, 10.5)
    with pytest.raises(ValueError, match="step must be >= 0"):
        TemperatureSchedule(2.0, 1.0, 10)(-1)


def test_schedule_drives_the_router(rng):
    tokens, w, logits = linear_case(rng)
    sched = TemperatureSchedule(4.0, 1.0, 10)
    early = fused_moe(tokens, w, logits, 4, temperature=sched(0))
    late = fused_moe(tokens, w, logits, 4, temperature=sched(10))
    np.testing.assert_array_equal(late, fused_moe(tokens, w, logits, 4))
    assert not np.allclose(early, late)

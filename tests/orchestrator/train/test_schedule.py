"""The learning rate at chosen steps against the schedules' formulas: warmup-stable-decay with its linear and
1-sqrt decays, in one run, as a decay phase of its own, and across a resume from saved state."""

from __future__ import annotations

import io
import math

import pytest
import torch

from orchestrator.config import OptimConfig
from orchestrator.train.optim import build_scheduler

PEAK = 1e-3
TOTAL = 100


def schedule(**settings):
    """An optimizer over one parameter and its scheduler for a run of TOTAL steps."""
    config = OptimConfig(lr=PEAK, **settings)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=PEAK)
    return optimizer, build_scheduler(optimizer, config, TOTAL)


def learning_rates(optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate of each of the next `steps` updates (then the scheduler has stepped past them)."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def wsd_expected(step: int, warmup: int, decay: int, shape: str, floor: float) -> float:
    """Warmup-stable-decay written out: the lr of the update from `step` to step + 1."""
    if step < warmup:
        return PEAK * (step + 1) / warmup
    t = step - (TOTAL - decay)
    if t < 0:
        return PEAK
    remaining = 1 - t / decay if shape == "linear" else 1 - math.sqrt(t / decay)
    return PEAK * (floor + (1 - floor) * remaining)


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_warmup_stable_decay_at_its_landmarks_fresh_and_resumed(shape):
    settings = {"schedule": "wsd", "warmup_steps": 10, "decay_steps": 40, "decay_shape": shape}
    optimizer, scheduler = schedule(**settings, min_lr_ratio=0.1)
    rates = learning_rates(optimizer, scheduler, TOTAL)
    middle = 1 - 0.5 if shape == "linear" else 1 - math.sqrt(0.5)
    landmarks = {
        0: PEAK / 10,  # the first warmup step
        9: PEAK,  # the warmup's end
        35: PEAK,  # mid-stable
        60: PEAK,  # the decay's first step, still the peak
        80: PEAK * (0.1 + 0.9 * middle),  # the middle of the decay
        99: PEAK * (0.1 + 0.9 * (1 - 39 / 40 if shape == "linear" else 1 - math.sqrt(39 / 40))),
    }
    for step, expected in landmarks.items():
        assert rates[step] == pytest.approx(expected, rel=1e-12), step
    assert rates == pytest.approx([wsd_expected(s, 10, 40, shape, 0.1) for s in range(TOTAL)], rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * PEAK)  # after the last step: the floor

    # Saved at step 70 (in the decay) and read back with weights_only, as a checkpoint is: the same rates.
    optimizer, scheduler = schedule(**settings, min_lr_ratio=0.1)
    learning_rates(optimizer, scheduler, 70)
    saved = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    optimizer, scheduler = schedule(**settings, min_lr_ratio=0.1)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert learning_rates(optimizer, scheduler, 30) == rates[70:]


def test_a_decay_phase_of_its_own_decays_from_the_peak_at_its_first_step():
    """ModernBERT's decay as a run of its own (from the main phase's checkpoint): no warmup, every step
    decays."""
    optimizer, scheduler = schedule(schedule="wsd", decay_fraction=1.0, decay_shape="1-sqrt")
    rates = learning_rates(optimizer, scheduler, TOTAL)
    assert rates[0] == PEAK
    assert rates[25] == pytest.approx(PEAK * 0.5)  # 1 - sqrt(1/4)
    assert rates == pytest.approx([PEAK * (1 - math.sqrt(s / TOTAL)) for s in range(TOTAL)], rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == 0.0


def test_a_main_phase_without_decay_holds_the_peak_to_its_end():
    optimizer, scheduler = schedule(schedule="wsd", warmup_steps=5, decay_steps=0)
    assert learning_rates(optimizer, scheduler, TOTAL)[5:] == [PEAK] * (TOTAL - 5)


def test_a_decay_fraction_is_a_share_of_the_run():
    assert OptimConfig(schedule="wsd", warmup_steps=10, decay_fraction=0.2).phase_steps(TOTAL) == (10, 20)
    assert OptimConfig(schedule="cosine", warmup_steps=10).phase_steps(TOTAL) == (10, 90)


def test_linear_and_cosine_are_unchanged_by_a_zero_floor_and_end_at_a_floor():
    """min_lr_ratio 0 (the default) leaves the BERT schedules' values bit for bit; another floor is where
    they end."""
    for shape in ("linear", "cosine"):
        optimizer, scheduler = schedule(schedule=shape, warmup_steps=10)
        progress = [(s - 10) / 90 for s in range(10, TOTAL)]
        bert = [1 - p if shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * p)) for p in progress]
        assert learning_rates(optimizer, scheduler, TOTAL)[10:] == [PEAK * r for r in bert]
        optimizer, scheduler = schedule(schedule=shape, warmup_steps=10, min_lr_ratio=0.2)
        learning_rates(optimizer, scheduler, TOTAL)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * PEAK)

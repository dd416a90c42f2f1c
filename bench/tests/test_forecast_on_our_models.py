"""CachedTailResidual's forecast on our pre-trained digits DiT, and its rows in the bench grid."""

import pytest
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel

from bench.grid import exit_methods
from bench.models import PRETRAINED_MODEL_DIR
from bench.presets import Preset
from ee_diffusion import EarlyExitConfig, apply_early_exit, remove_early_exit
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import CachedTailResidual
from ee_diffusion.testing import tiny_dit
from tests._sampling import sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@torch.no_grad()
def test_forecast_brings_samples_closer_to_the_full_model_on_the_pretrained_dit():
    """On the shipped pre-trained digits DiT (DDIM, 16 rows, a full call every other call), order 1 lands
    closer to the full model's samples than reuse at 15, 25 and 50 steps: the forecast is in the timestep, so
    one setting holds at every step count (about half the distance; the table for 64 rows and more skip rules
    is in docs/tail_cache.md). Storing the history in 16 bits barely moves it."""
    model = DiTTransformer2DModel.from_pretrained(PRETRAINED_MODEL_DIR / "transformer").eval()
    config = DDIMScheduler.from_pretrained(PRETRAINED_MODEL_DIR / "scheduler").config
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 10

    def deviation(steps, full, **options):  # relative RMS distance of the final samples to the full model's
        # A threshold no change reaches: every row skips whenever max_cached_calls lets it.
        apply_early_exit(model, EarlyExitConfig(policy=CachedTailResidual(threshold=1e9, max_cached_calls=1, **options)))
        out = sample(model, x, labels, DDIMScheduler.from_config(config), steps)
        remove_early_exit(model)
        return ((out - full).pow(2).mean() / full.pow(2).mean()).sqrt().item()

    for steps in (15, 25, 50):
        full = sample(model, x, labels, DDIMScheduler.from_config(config), steps)
        reuse, forecast = deviation(steps, full, forecast_order=0), deviation(steps, full, forecast_order=1)
        assert forecast < 0.8 * reuse, (steps, reuse, forecast)
        if steps == 25:
            for state_dtype in ("float16", "bfloat16"):
                low = deviation(steps, full, forecast_order=1, state_dtype=state_dtype)
                assert low == pytest.approx(forecast, rel=0.02) and low != forecast


def test_bench_grid_has_a_tail_cache_row_per_forecast_order():
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler())
    preset = Preset(static_fractions=(), ase=(), budgets=(), tail_thresholds=(0.1, 0.2), tail_forecast_orders=(0, 2))
    methods, _ = exit_methods(pipe, ("ddim", 10), preset, feature_net=None, guidance=1.0, sampler=None)
    rows = {m.name: m.exit_config.policy for m in methods}
    assert {name: (p.threshold, p.forecast_order) for name, p in rows.items()} == {
        "tail0.1@ddim10": (0.1, 0), "tail0.1_o2@ddim10": (0.1, 2), "tail0.2@ddim10": (0.2, 0),
        "tail0.2_o2@ddim10": (0.2, 2)}
    assert all(EarlyExitConfig.from_dict(m.exit_config.to_dict()) == m.exit_config for m in methods)

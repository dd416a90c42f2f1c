"""MagCache's ratios measured on a model (`bench.mag_cache`), and MagCache with them as a bench baseline."""

import pytest

from bench.mag_cache import calibrate_mag_ratios
from ee_diffusion.eval.baselines import CacheBaseline
from tests._eval_pipes import sample_classes, assert_caches_skip_work_and_leave_the_model_exact, tiny_dit_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_mag_cache_with_calibrated_ratios_skips_work_and_leaves_the_model_exact():
    pipe = tiny_dit_pipeline()
    steps = 6
    ratios = calibrate_mag_ratios(lambda: sample_classes(pipe, range(10, 12), num_inference_steps=steps),
                                  pipe.transformer, pipe.scheduler, steps)
    assert len(ratios) == steps and ratios[0] == 1.0
    cache = CacheBaseline("mag_cache", {"threshold": 10.0, "mag_ratios": ratios, "retention_ratio": 0.0})
    assert_caches_skip_work_and_leave_the_model_exact(pipe, [cache], steps)

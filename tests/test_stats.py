"""`ExitStats`: totals and fractions, and merging that keeps every per-call flag."""

import pytest
import torch

from _eval_pipes import sample_classes
from ee_diffusion.stats import ExitStats


def _stats(blocks, fallbacks=None, nonfinite=None, num_blocks=4):
    stats = ExitStats(num_blocks)
    stats.record(torch.tensor([900.0] * len(blocks)), torch.tensor(blocks), False,
                 None if fallbacks is None else torch.tensor(fallbacks),
                 None if nonfinite is None else torch.tensor(nonfinite))
    return stats


def test_totals_and_fraction():
    stats = _stats([1, 4])
    stats.extend(_stats([2, 2]))
    assert (stats.num_calls, stats.total_blocks, stats.full_blocks) == (2, 9, 16)
    assert stats.depth_fraction == pytest.approx(9 / 16)


def test_extend_keeps_fallback_and_nonfinite_flags():
    merged = _stats([4, 1])
    merged.extend(_stats([4, 4], fallbacks=[True, False], nonfinite=[False, True]))
    assert merged.num_fallbacks == 1 and merged.num_nonfinite == 1
    assert merged.to_dict()["fallback_rows"] == [[], [0]] and merged.to_dict()["nonfinite_rows"] == [[], [1]]
    with pytest.raises(ValueError, match="4-block"):
        ExitStats(8).extend(merged)


def test_sampling_keeps_the_flags_of_every_call(monkeypatch):
    """`sample_pipeline` merges each pipeline call's statistics whole (it used to drop the fallback and non-finite
    flags)."""
    from diffusers import DDIMScheduler

    from ee_diffusion.pipelines import EarlyExitDiTPipeline
    from ee_diffusion.testing import tiny_dit

    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    flagged = _stats([2, 2], fallbacks=[False, True], nonfinite=[True, False], num_blocks=2)
    original = EarlyExitDiTPipeline.__call__

    def flagging_call(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        out.exit_stats.extend(flagged)  # as if one more call had flagged rows
        return out

    monkeypatch.setattr(EarlyExitDiTPipeline, "__call__", flagging_call)
    run = sample_classes(pipe, range(3), num_inference_steps=2, batch_size=2)
    stats = run.extra["exit_stats"]
    assert stats.num_calls == 2 * (2 + 1)  # two batches of 2 steps, each with the extra flagged call
    assert stats.num_fallbacks == 2 and stats.num_nonfinite == 2

"""`bench.compute`: FLOPs of a sampling run (blocks and heads counted, fewer with exits); timing summaries as
medians of per-round ratios."""

import pytest

from bench.compute import count_flops, summarize_timings
from ee_diffusion import EarlyExitConfig
from ee_diffusion.schedules import StaticDepth, UncertaintyThreshold
from tests._eval_pipes import sample_classes, tiny_dit_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flops_count_blocks_heads_and_shrink_with_exits():
    pipe = tiny_dit_pipeline(heads=True)
    call = lambda config: count_flops(lambda: sample_classes(pipe, range(2), num_inference_steps=2, exit_config=config))
    full = call(None)
    half = call(EarlyExitConfig(policy=StaticDepth(2)))
    heads = call(EarlyExitConfig(policy=UncertaintyThreshold(0.999, patience=1)))
    assert full["heads"] == 0 and heads["heads"] > 0
    assert half["total"] < full["total"] < heads["total"]


def test_summary_is_the_median_time_and_the_median_of_per_round_ratios():
    times = {"full": [1.0, 3.0, 2.0, 4.0, 1.0], "fast": [0.8, 0.6, 1.2, 2.0, 0.9], "slow": [2.0, 6.0, 4.0, 8.0, 2.0]}
    summary = summarize_timings(times, reference="full")
    # fast/full per round: 0.8, 0.2, 0.6, 0.5, 0.9 -> median 0.6 (the ratio of the medians would be 0.9 / 2 = 0.45).
    assert summary["fast"] == {"median_s": 0.9, "min_s": 0.6, "ratio_to_reference": 0.6}
    assert summary["slow"] == {"median_s": 4.0, "min_s": 2.0, "ratio_to_reference": 2.0}
    assert summary["full"] == {"median_s": 2.0, "min_s": 1.0, "ratio_to_reference": 1.0}
    # A drift that slows one round of every method alike does not move the ratios.
    drifted = {name: [v * (10.0 if i == 3 else 1.0) for i, v in enumerate(values)] for name, values in times.items()}
    assert summarize_timings(drifted, "full")["fast"]["ratio_to_reference"] == 0.6


def test_summary_rejects_an_unknown_reference_and_uneven_rounds():
    with pytest.raises(ValueError, match=r"reference 'ful' is not among the timed methods \['fast', 'full'\]"):
        summarize_timings({"full": [1.0], "fast": [0.5]}, reference="ful")
    with pytest.raises(ValueError, match=r"as many rounds as 'full' \(2\), got \{'full': 2, 'fast': 1\}"):
        summarize_timings({"full": [1.0, 1.0], "fast": [0.5]}, reference="full")

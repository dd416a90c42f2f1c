"""`python -m bench bench-caches`: per-row tail caches against diffusers' caches at matched speed."""

import json
from dataclasses import replace

import pytest
import torch

from bench import caches_bench, caches_compare, caches_report, caches_state
from bench.cli import main
from bench.grid import Method
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.eval.paired import PairedFIDs
from ee_diffusion.schedules import CachedTailResidual


@pytest.fixture(scope="module")
def ci_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("caches")
    assert main(["bench-caches", "--preset", "ci", "--threads", "1", "--out", str(out)]) == 0
    return json.loads((out / "report.json").read_text()), out


@pytest.mark.slow
def test_the_ci_preset_scores_times_and_compares_every_row(ci_report):
    report, out = ci_report
    preset = caches_bench.PRESETS["ci"]
    rows = report["rows"]
    tails = [n for n, r in rows.items() if r["family"] == "tail_cache"]
    assert len(tails) == (len(preset.tail_thresholds) + len(preset.tail_cadences)) * len(preset.forecast_orders)
    attached = {r["family"] for r in rows.values() if r["family"] in caches_report.CACHE_FAMILIES}
    assert attached | set(report["not_attached"]) == set(caches_report.CACHE_FAMILIES)
    for name, r in rows.items():
        assert set(r["timing"]) == {str(b) for b in preset.batches}, name
        assert len(r["fid_resamples"]) == preset.bootstrap
    # Every cache row at every batch is matched against the per-row rows (or says none is as fast).
    cache_rows = [n for n, r in rows.items() if r["family"] in caches_report.CACHE_FAMILIES and not n.endswith("sorted")]
    assert sorted(c["cache"] for c in report["comparisons"]) == sorted(cache_rows)
    for c in report["comparisons"]:
        if c["per_row"] is not None:
            assert rows[c["per_row"]["row"]]["timing"][str(c["batch"])]["speedup"] >= c["cache_speedup"]
    assert report["batch_independence"]["max_abs_difference"] < 1e-4
    # cache-dit's rows say which steps it cached, per pipeline call; every row has its cost at DiT-XL/2 width.
    cache_dit = [r for r in rows.values() if r["family"] == "cache_dit"]
    assert len(cache_dit) == len(preset.cache_dit_rows()) * (len(preset.batches) + 1) and report["environment"]["cache_dit"]
    assert all(r["cached_steps"] and r["mean_cached_steps"] > 0 for r in cache_dit)
    assert rows[report["reference"]]["xl_cost"]["speedup"] == 1.0
    assert all(r["xl_cost"]["speedup"] > 1.0 for r in cache_dit)
    assert (out / "report.md").read_text() == caches_report.markdown(report)
    assert (out / "pareto.png").stat().st_size > 0


@pytest.mark.slow
def test_placed_rows_compute_where_taylorseer_does_and_evenly(ci_report):
    """The ci preset's placed rows (6 DPM-Solver++ steps): at TaylorSeer's compute steps ([0, 2, 4] at interval 2
    after 1 warm-up step; [0, 1, 3, 5] after 2 with the last), on 3 evenly spread steps ([0, 2, 5] with the last) and
    on a placement given as it is ([0, 3]).
    A placed row computes k of the 6 calls for every image: its block fraction is k / 6 of the 8-step reference's."""
    report, _ = ci_report
    rows = report["rows"]
    for name, calls in (("bfts2_o1_w1", [0, 2, 4]), ("bfts2_o1_w2_l", [0, 1, 3, 5]), ("bfe3_o1", [0, 2, 5]),
                        ("bfp0-3_o1", [0, 3])):
        row = rows[f"{name}@dpmpp6"]
        assert row["notes"]["calls"] == calls and row["family"] == "block_forecast"
        assert row["block_fraction"] == pytest.approx(len(calls) / 8)


@pytest.mark.slow
def test_the_measured_per_row_state_is_its_formula(ci_report):
    report, _ = ci_report
    assert report["state_memory"], "the state of at least one per-row row is measured"
    for m in report["state_memory"].values():
        assert m["batch"] == 64 and m["measured_bytes"] == m["formula_bytes"] > 0
        assert m["dit_xl_2_bfloat16_bytes"] < m["dit_xl_2_float32_bytes"]


def _rows_with_features(sets, features):
    """Rows as `run` stores them, for hand-made features: a reference, two per-row rows and one cache."""
    rows = {}
    specs = {"ref": ("reference", 1.0, 1.0), "slow_good": ("tail_cache", 1.5, 0.5),
             "fast_bad": ("tail_cache", 3.0, 0.3), "fbc|b8": ("first_block_cache", 2.0, 0.5)}
    for name, (family, speed, blocks) in specs.items():
        fid = sets["all"].add(name, {"net": features[name]})
        rows[name] = {"name": name, "family": family, "batch": 8, "scored_on": "all", "fid": fid["net"],
                      "fid_by_net": fid, "timing": {"8": {"speedup": speed}}, "block_fraction": blocks}
    return rows


def test_matched_comparison_takes_the_best_per_row_row_at_least_as_fast():
    torch.manual_seed(0)
    real = torch.randn(400, 4)
    noise = torch.randn(200, 4)
    features = {"ref": noise, "slow_good": noise, "fast_bad": noise * 2 + 1, "fbc|b8": noise * 1.5 + 0.5}
    sets = {"all": PairedFIDs({"net": real}, 200, 50, 0.9)}
    rows = _rows_with_features(sets, features)
    tails = [Method("slow_good", "tail_cache", "ddim", 4, notes={"forecast_order": 1}),
             Method("fast_bad", "tail_cache", "ddim", 4, notes={"forecast_order": 1})]
    [entry] = caches_compare.matched_comparisons(rows, sets, tails)
    # slow_good has the better FID but is slower than the cache (1.5x < 2x): only fast_bad is matched, and loses.
    assert entry["forecast"]["row"] == "fast_bad" and entry["forecast"]["result"] == "loses"
    rows["slow_good"]["timing"]["8"]["speedup"] = 2.0  # now exactly as fast as the cache: matched, and it wins
    [entry] = caches_compare.matched_comparisons(rows, sets, tails)
    assert entry["forecast"]["row"] == "slow_good" and entry["forecast"]["result"] == "wins"
    summary = caches_compare.summarize([entry])
    assert summary["first_block_cache"]["forecast_wins_somewhere"] is True
    assert summary["first_block_cache"]["forecast_never_loses_at_batch_1"] is None  # nothing measured at batch 1


@pytest.mark.parametrize("speed, blocks, noise, matched", [
    (1.95, 0.5, 0.05, True),    # 2.5% slower, the same block evaluations, timing noise 5%: equal wall-clock
    (1.95, 0.5, 0.0, False),    # no noise measured: the median decides
    (1.85, 0.5, 0.05, False),   # 7.5% slower: beyond the noise
    (1.95, 0.6, 0.05, False),   # more block evaluations than the cache: it must be faster by its median
    (2.10, 0.9, 0.0, True),     # faster by its median, whatever its block evaluations
])
def test_a_row_within_the_timing_noise_doing_no_more_work_counts_as_matched(speed, blocks, noise, matched):
    torch.manual_seed(0)
    real, draws = torch.randn(400, 4), torch.randn(200, 4)
    features = {"ref": draws, "slow_good": draws, "fast_bad": draws * 2 + 1, "fbc|b8": draws * 1.5 + 0.5}
    sets = {"all": PairedFIDs({"net": real}, 200, 50, 0.9)}
    rows = _rows_with_features(sets, features)
    rows["slow_good"]["timing"]["8"]["speedup"], rows["slow_good"]["block_fraction"] = speed, blocks
    tails = [Method("slow_good", "tail_cache", "ddim", 4, notes={"forecast_order": 1}),
             Method("fast_bad", "tail_cache", "ddim", 4, notes={"forecast_order": 1})]
    [entry] = caches_compare.matched_comparisons(rows, sets, tails, {"8": noise})
    assert (entry["forecast"]["row"] == "slow_good") is matched
    assert entry["forecast"]["within_noise"] is (matched and speed < 2.0)
    # The fewer-steps frontier is matched by the same rule: a fewer-steps row within the noise of ours counts.
    # At DiT-XL/2 width the speedups come from counted work: a row as cheap as the cache is matched, one 1% dearer is not.
    for name, r in rows.items():
        r["xl_cost"] = {"speedup": 2.0 if name == "fbc|b8" else 3.0 if name == "fast_bad" else 1.0}
    rows["slow_good"]["xl_cost"]["speedup"] = 2.0 * (1.0 if matched else 0.99)
    [entry] = caches_compare.matched_comparisons(rows, sets, tails, xl=True)
    assert entry["cache_speedup"] == 2.0 and (entry["forecast"]["row"] == "slow_good") is matched
    rows["ref"]["family"] = "fewer_steps"
    rows["ref"]["timing"]["8"]["speedup"], rows["ref"]["block_fraction"] = speed, blocks
    target = {**rows["fbc|b8"], "name": "fbc|b8"}
    assert caches_compare.as_fast(rows["ref"], target, "8", {"8": noise}) is matched


def test_an_unmatched_batch_1_setting_does_not_count_as_never_losing():
    comparison = {"family": "sea_cache", "batch": 1, "forecast": None}
    assert caches_compare.summarize([comparison])["sea_cache"]["forecast_never_loses_at_batch_1"] is False


@pytest.mark.parametrize("change, match", [
    ({"setting": "nope"}, "setting must be one of"),
    ({"solver": "euler"}, "solver must be one of"),
    ({"batch1_images": 5000}, "batch1_images must be at most"),
    ({"batches": (0, 8)}, "batches must be positive"),
    ({"frontier_steps": (25,)}, r"frontier_steps must lie in \[1, 25\)"),
    ({"tail_thresholds": (1.5,)}, "tail_thresholds must be non-empty"),
    ({"forecast_orders": (3,)}, "forecast_orders must be"),
    ({"placed_orders": (3,)}, r"placed_orders must be forecast orders 0, 1 or 2, got \(3,\)"),
    ({"even_computes": (25,)}, r"every value of even_computes must be below steps \(25\), got 25"),
    ({"even_computes": (1,)}, "every value of even_computes must be an integer >= 2"),
    ({"placements": ((1, 4),)},
     r"every placement must be increasing step indices from 0, below steps \(25\), got \(1, 4\)"),
    ({"placements": ((0, 4, 4),)}, "every placement must be increasing"),
    ({"placements": ((0, 25),)}, "every placement must be increasing"),
    ({"first_image": -1}, "first_image must be an integer >= 0"),
])
def test_bad_presets_are_refused_with_the_allowed_values(change, match):
    with pytest.raises(ValueError, match=match):
        replace(caches_bench.CachesPreset(), **change)


def test_a_confirmation_scores_images_past_the_ones_a_preset_scored():
    preset = replace(caches_bench.CachesPreset(), num_images=320, batch1_images=64)
    assert preset.scored_images() == (range(320), range(64))
    confirm = caches_bench.PRESETS["confirm15"]
    assert confirm.scored_images() == (range(320, 960), range(320, 384))
    assert set(confirm.scored_images()[0]).isdisjoint(caches_bench.PRESETS["place15"].scored_images()[0])


def test_the_state_of_a_per_row_row_is_measured_at_the_batch_asked_for():
    from bench.models import load_setting_pipeline

    pipe = load_setting_pipeline("digits-deep-pretrained")
    method = Method("t", "tail_cache", "ddim", 4, EarlyExitConfig(CachedTailResidual(threshold=0.1, forecast_order=2)),
                    notes={"forecast_order": 2})
    small, large = caches_state.state_memory(pipe, method, 2), caches_state.state_memory(pipe, method, 6)
    assert large["measured_bytes"] == 3 * small["measured_bytes"] == 3 * small["formula_bytes"]


def test_timing_noise_is_the_typical_round_to_round_spread_of_a_speedup():
    steady = {"full": [2.0] * 5, "fast": [1.0] * 5, "slow": [4.0] * 5}
    assert caches_compare.timing_noise(steady, "full") == 0.0
    # A drift that slows a whole round alike does not count as noise: ratios are taken within a round.
    drifted = {name: [v * (1.0 + 0.3 * i) for i, v in enumerate(values)] for name, values in steady.items()}
    assert caches_compare.timing_noise(drifted, "full") == pytest.approx(0.0, abs=1e-12)
    noisy = {"full": [2.0] * 5, "fast": [1.0, 0.8, 1.25, 0.5, 2.0], "same": [1.0] * 5}
    assert caches_compare.timing_noise(noisy, "full") == pytest.approx((0.225 + 0.0) / 2)  # the median of the two spreads
    with pytest.raises(ValueError, match=r"reference 'ful' is not among the timed methods"):
        caches_compare.timing_noise(noisy, "ful")


def test_a_difference_below_the_printed_precision_is_a_tie():
    """The same placement by two implementations differs by float rounding (about 1e-6 FID): never a loss or a win."""
    def interval(low, high):
        return {"by_net": {"a": {"low": -1.0, "high": 1.0}, "b": {"low": low, "high": high}}}

    assert caches_compare._verdict({"by_net": {"a": {"low": 1e-7, "high": 2e-6}}}) == "ties"
    assert caches_compare._verdict({"by_net": {"a": {"low": -2e-6, "high": -1e-7}}}) == "ties"
    assert caches_compare._verdict({"by_net": {"a": {"low": 0.01, "high": 0.2}}}) == "loses"
    assert caches_compare._verdict({"by_net": {"a": {"low": -0.2, "high": -0.01}}}) == "wins"
    assert caches_compare._verdict(interval(1e-7, 2e-6)) == "ties"  # a's interval spans 0, b's is rounding

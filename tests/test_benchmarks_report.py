"""The bench's decisions on crafted rows (paired intervals, knees, frontier wins, the recommendation and its
operating point); re-rendering a saved preset report: bench/tests/test_publish.py."""

import numpy as np
import pytest

from ee_diffusion import EarlyExitConfig
from ee_diffusion.eval import frontier
from ee_diffusion.operating_point import OperatingPoint
from ee_diffusion.schedules import StaticDepth

REF_FID = 10.0
CONFIDENCE = 0.9
# Shared resampling noise: every row's resampled FIDs are the reference's plus its own offsets, so the paired
# interval of a row against the reference is exactly the 5%..95% range of those offsets.
BASE = REF_FID + np.random.default_rng(0).normal(0, 1.0, 400)


def _row(name, family, delta, spread=0.1, solver="ddim", steps=25, blocks=1.0, time=None, config=None):
    offsets = np.linspace(delta - spread, delta + spread, BASE.size)
    row = {"name": name, "family": family, "solver": solver, "steps": steps, "fid": REF_FID + delta,
           "fid_resamples": (BASE + offsets).tolist(), "block_fraction": blocks,
           "exit_config": None if config is None else EarlyExitConfig(StaticDepth(config)).to_dict()}
    if time is not None:
        row["time_ratio"], row["speedup"] = time, 1 / time
    return row


def _rows(*rows):
    ref = _row("ddim25", "reference", 0.0, spread=0.0, time=1.0)
    return {r["name"]: r for r in (ref, *rows)}


def test_paired_interval_is_the_range_of_the_paired_differences():
    a, b = _row("a", "static_depth", 1.0, spread=0.5), _row("b", "static_depth", 0.25, spread=0.0)
    d = frontier.paired_interval(a, b, CONFIDENCE)
    assert d["delta"] == pytest.approx(0.75)
    assert d["low"] == pytest.approx(0.75 - 0.45, abs=0.01) and d["high"] == pytest.approx(0.75 + 0.45, abs=0.01)


@pytest.mark.parametrize("low, high, holds", [(-0.5, 0.5, True), (-2.0, -1.0, True), (0.2, 0.99, True),
                                              (0.2, 1.0, False), (0.5, 3.0, False)])
def test_unchanged_quality_is_decided_by_the_interval_alone(low, high, holds):
    assert frontier.holds_quality({"delta": (low + high) / 2, "low": low, "high": high}, REF_FID) is holds


def test_the_knee_is_the_fewest_steps_per_solver_whose_interval_reaches_zero():
    rows = _rows(_row("ddim20", "fewer_steps", 0.05, 0.1, steps=20, blocks=0.8, time=0.8),
                 _row("ddim12", "fewer_steps", 1.5, 0.2, steps=12, blocks=0.48, time=0.48),
                 _row("dpmpp9", "fewer_steps", 0.5, 0.2, solver="dpmpp", steps=9, blocks=0.36, time=0.36),
                 _row("dpmpp8", "fewer_steps", 0.0, 0.3, solver="dpmpp", steps=8, blocks=0.32, time=0.32),
                 _row("dpmpp6", "fewer_steps", 2.0, 0.3, solver="dpmpp", steps=6, blocks=0.24, time=0.24))
    decisions = frontier.decide(rows, CONFIDENCE)
    # Not monotone in steps: dpmpp9 is worse than dpmpp8, and the fewest steps that reach 0 win.
    assert decisions["knees"] == {"ddim": "ddim20", "dpmpp": "dpmpp8"}
    assert decisions["knee"] == "dpmpp8" and decisions["recommended"] == "dpmpp8"
    assert "does not beat the fewer-steps frontier" in decisions["verdict"]


def test_a_frontier_win_needs_the_whole_interval_below_at_equal_time_and_blocks():
    frontier_rows = [_row("dpmpp8", "fewer_steps", 1.0, 0.2, solver="dpmpp", steps=8, blocks=0.32, time=0.33),
                     _row("dpmpp10", "fewer_steps", 0.0, 0.2, solver="dpmpp", steps=10, blocks=0.40, time=0.41)]
    win = _row("static7@dpmpp10", "static_depth", 0.0, 0.3, solver="dpmpp", steps=10, blocks=0.35, time=0.37, config=7)
    overlap = _row("static6@dpmpp10", "static_depth", 0.7, 0.3, solver="dpmpp", steps=10, blocks=0.33, time=0.35,
                   config=6)
    slow = _row("tail@dpmpp10", "tail_cache", 0.0, 0.1, solver="dpmpp", steps=10, blocks=0.33, time=0.45, config=5)
    rows = _rows(*frontier_rows, win, overlap, slow)
    frontier.decide(rows, CONFIDENCE)
    vs = rows["static7@dpmpp10"]["vs_frontier"]
    # Matched to dpmpp8 on both axes (dpmpp10 costs more); the margin is frontier low - row high.
    assert vs["time_ratio"]["frontier"] == vs["block_fraction"]["frontier"] == "dpmpp8"
    assert vs["beats"] and vs["time_ratio"]["margin"] == pytest.approx(0.82 - 0.27, abs=0.01)
    assert not rows["static6@dpmpp10"]["vs_frontier"]["beats"]  # intervals overlap: no win
    # Fewer blocks than dpmpp10 but slower than it in wall-clock: matched to dpmpp10 by time, which is as good.
    slow_vs = rows["tail@dpmpp10"]["vs_frontier"]
    assert slow_vs["time_ratio"]["frontier"] == "dpmpp10" and not slow_vs["beats"]


def test_cheaper_than_every_frontier_point_is_no_win():
    rows = _rows(_row("ddim20", "fewer_steps", 0.0, steps=20, blocks=0.8, time=0.8),
                 _row("static1", "static_depth", -5.0, 0.1, blocks=0.125, time=0.2, config=1))
    frontier.decide(rows, CONFIDENCE)
    vs = rows["static1"]["vs_frontier"]
    assert vs["beats"] is False and vs["time_ratio"]["frontier"] is None


def test_the_recommendation_prefers_the_fastest_quality_holding_frontier_win():
    rows = _rows(
        _row("dpmpp10", "fewer_steps", 0.0, 0.2, solver="dpmpp", steps=10, blocks=0.40, time=0.41),
        _row("dpmpp8", "fewer_steps", 1.2, 0.2, solver="dpmpp", steps=8, blocks=0.32, time=0.33),
        _row("dpmpp7", "fewer_steps", 2.0, 0.2, solver="dpmpp", steps=7, blocks=0.28, time=0.29),
        _row("static7@dpmpp8", "static_depth", 0.1, 0.2, solver="dpmpp", steps=8, blocks=0.28, time=0.30, config=7),
        _row("static6@dpmpp8", "static_depth", 0.1, 0.2, solver="dpmpp", steps=8, blocks=0.24, time=0.25, config=6),
        _row("fbc@ddim25", "first_block_cache", -1.0, 0.1, blocks=0.2, time=0.1),  # a baseline: never stored
    )
    # static6 holds quality but is cheaper than every frontier point: not a proven win, so static7 is chosen.
    decisions = frontier.decide(rows, CONFIDENCE)
    assert decisions["recommended"] == "static7@dpmpp8"
    assert decisions["exit_rows_beating_frontier"] == ["static7@dpmpp8"]
    assert "uses early exit" in decisions["verdict"]
    schedulers = {"ddim": "DDIMScheduler", "dpmpp": "DPMSolverMultistepScheduler"}
    point = frontier.operating_point(rows, decisions["recommended"], schedulers, 1.0, 25, CONFIDENCE, "here")
    assert point["scheduler"] == "DPMSolverMultistepScheduler" and point["num_inference_steps"] == 8
    assert point["exit_config"] == rows["static7@dpmpp8"]["exit_config"]
    assert point["exit_configs_by_steps"] == {"8": rows["static7@dpmpp8"]["exit_config"]}
    assert OperatingPoint.from_dict(point).to_dict() == point
    # Without the win, steps alone: the fastest frontier point that holds quality.
    rows["static7@dpmpp8"].update(fid=REF_FID + 2.0, fid_resamples=(np.asarray(rows["dpmpp7"]["fid_resamples"])).tolist())
    decisions = frontier.decide(rows, CONFIDENCE)
    assert decisions["recommended"] == "dpmpp10" and decisions["exit_rows_beating_frontier"] == []
    point = frontier.operating_point(rows, "dpmpp10", schedulers, 1.0, 25, CONFIDENCE, "")
    assert point["exit_config"] is None and point["exit_configs_by_steps"] == {"8": None}


def test_exit_wins_that_lose_quality_leave_the_recommendation_to_steps_alone():
    rows = _rows(_row("dpmpp10", "fewer_steps", 0.0, 0.2, solver="dpmpp", steps=10, blocks=0.40, time=0.41),
                 _row("dpmpp6", "fewer_steps", 6.0, 0.2, solver="dpmpp", steps=6, blocks=0.24, time=0.25),
                 _row("static4@dpmpp8", "static_depth", 4.0, 0.2, solver="dpmpp", steps=8, blocks=0.25, time=0.26,
                      config=4))
    decisions = frontier.decide(rows, CONFIDENCE)
    assert decisions["exit_rows_beating_frontier"] == ["static4@dpmpp8"] and decisions["recommended"] == "dpmpp10"
    assert "none of them holds quality" in decisions["verdict"] and "steps alone" in decisions["verdict"]

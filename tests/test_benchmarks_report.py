"""The bench report: the recommendation rule and the targets on crafted rows, re-rendering a saved report after
an edit, and writing the recommendation into a pipeline folder."""

import json
import shutil
from pathlib import Path

import pytest

from ee_diffusion import EarlyExitConfig
from ee_diffusion.benchmarks.report import (
    RECOMMENDABLE_FAMILIES,
    _recommend,
    _targets,
    rerender,
    set_recommended_exit_config,
)

COMMITTED_REPORT = Path(__file__).resolve().parents[1] / "docs" / "bench-ci-report.json"
STEPS, FULL_FID, SPREAD = 20, 10.0, 2.0


def _row(name, family, fid, speedup=None, steps=STEPS, block_fraction=0.5):
    row = {"name": name, "family": family, "fid": fid, "num_inference_steps": steps, "block_fraction": block_fraction}
    if speedup is not None:  # the bench times every method but the other seeds
        row["speedup"] = speedup
    return row


def _rows(*rows):
    references = [_row("full", "full", FULL_FID, 1.0, block_fraction=1.0),
                  _row("full_seed1", "seed", FULL_FID + SPREAD, block_fraction=1.0)]
    return {r["name"]: r for r in references + list(rows)}


def test_the_fastest_early_exit_within_the_spread_at_the_reference_steps_wins():
    rows = _rows(
        _row("ase", "ase", 11.5, 1.3),
        _row("edge", "calibrated_schedule", FULL_FID + SPREAD, 1.6),  # exactly on the limit: within
        _row("outside", "static_depth", FULL_FID + SPREAD + 1e-9, 3.0),  # faster, just outside the spread
        _row("other_steps", "calibrated_thresholds", 9.0, 2.5, steps=12),  # faster, at another step count
        _row("composed", "calibrated_steps", 9.0, 2.2, steps=12),
        _row("steps_10", "fewer_steps", 9.0, 4.0),  # faster, but a reference
        _row("fbc", "first_block_cache", 9.0, 5.0),  # faster, but not an exit config
    )
    assert _recommend(rows, STEPS, SPREAD)["name"] == "edge"
    within = {name: row["within_seed_spread"] for name, row in rows.items()}
    assert within == {"full": True, "full_seed1": True, "ase": True, "edge": True, "outside": False,
                      "other_steps": True, "composed": True, "steps_10": True, "fbc": True}
    del rows["edge"]
    assert _recommend(rows, STEPS, SPREAD)["name"] == "ase"
    del rows["ase"]
    assert _recommend(rows, STEPS, SPREAD) is None
    assert _recommend(_rows(), STEPS, SPREAD) is None


@pytest.mark.parametrize("family", ["full", "seed", "fewer_steps", "first_block_cache", "calibrated_steps", "new"])
def test_rows_of_other_families_are_never_recommended(family):
    assert _recommend(_rows(_row("candidate", family, FULL_FID, 9.0)), STEPS, SPREAD) is None


@pytest.mark.parametrize("family", RECOMMENDABLE_FAMILIES)
def test_every_early_exit_family_can_be_recommended(family):
    assert _recommend(_rows(_row("candidate", family, FULL_FID, 1.1)), STEPS, SPREAD)["name"] == "candidate"


def _targets_of(*rows, setting="digits"):
    table = _rows(_row("steps_10", "fewer_steps", 20.0, 1.9), _row("static_half", "static_depth", 30.0, 1.8), *rows)
    _recommend(table, STEPS, SPREAD)  # marks within_seed_spread, which the targets read
    return _targets(setting, table, SPREAD)


def test_the_2x_target_takes_the_fastest_early_exit_within_the_spread_at_any_step_count():
    targets = _targets_of(_row("composed", "calibrated_steps", 11.0, 2.2, steps=12),
                          _row("ase", "ase", 11.5, 1.3),
                          _row("fast_bad", "static_depth", 25.0, 3.0, block_fraction=0.25))
    target = targets["speedup_2x_within_spread"]
    best = (target["best_within_spread"], target["speedup"], target["fid"], target["met"])
    assert best == ("composed", 2.2, 11.0, True)
    assert target["fid_limit"] == FULL_FID + SPREAD
    assert target["fewer_steps_best_within_spread"] is None  # steps_10 (FID 20) is outside the spread
    # Among everything at >= 2x, the best FID, and how far it is beyond the spread.
    assert target["best_at_2x"] == {"name": "composed", "fid": 11.0, "fid_gap_over_spread": 11.0 - FULL_FID - SPREAD}
    slow = _targets_of(_row("ase", "ase", 11.5, 1.3))["speedup_2x_within_spread"]
    assert (slow["best_within_spread"], slow["met"]) == ("ase", False) and "best_at_2x" not in slow
    assert "speedup_2x_within_spread" not in _targets_of(setting="glyphs")


def test_full_depth_beats_half_depth_only_by_more_than_the_spread():
    met = _targets_of()["full_depth_clearly_better_than_half"]
    assert (met["gap"], met["met"]) == (30.0 - FULL_FID, True)
    table = _rows(_row("static_half", "static_depth", FULL_FID + SPREAD, 1.8))
    _recommend(table, STEPS, SPREAD)
    assert _targets("digits", table, SPREAD)["full_depth_clearly_better_than_half"]["met"] is False


def test_a_win_is_below_both_the_fewer_steps_and_the_static_depth_curves():
    # At 0.75 of the blocks the fewer-steps curve (1.0 -> 10, 0.5 -> 20) reads 15, the static one (1.0 -> 10,
    # 0.5 -> 30) reads 20.
    targets = _targets_of(_row("good", "ase", 14.0, 1.3, block_fraction=0.75),
                          _row("tie", "deediff", 15.0, 1.3, block_fraction=0.75),
                          _row("fbc", "first_block_cache", 5.0, 1.3, block_fraction=0.75))
    wins = targets["beats_fewer_steps_and_static"]
    assert wins["met"] is True
    assert wins["wins"] == [{"name": "good", "block_fraction": 0.75, "fid": 14.0, "fewer_steps_fid": 15.0,
                             "static_depth_fid": 20.0}]
    tie_only = _targets_of(_row("tie", "deediff", 15.0, 1.3, block_fraction=0.75))
    assert tie_only["beats_fewer_steps_and_static"] == {**wins, "met": False, "wins": []}


def _saved_report(tmp_path):
    shutil.copy(COMMITTED_REPORT, tmp_path / "report.json")
    return json.loads((tmp_path / "report.json").read_text())


def test_rerender_applies_the_rule_to_edited_measurements(tmp_path):
    report = _saved_report(tmp_path)
    entry = report["settings"][0]
    rows, limit = entry["methods"], entry["methods"]["full"]["fid"] + entry["seed_spread"]
    before = entry["recommended"]
    # The slowest early exit at the report's step count becomes the fastest method, at the edge of the spread.
    pool = [r for r in rows.values()
            if r["family"] in RECOMMENDABLE_FAMILIES and r["num_inference_steps"] == entry["steps"]]
    chosen = min(pool, key=lambda r: r["speedup"])["name"]
    assert chosen != before
    rows[chosen].update(fid=limit, speedup=max(r.get("speedup", 0.0) for r in rows.values()) + 1.0)
    (tmp_path / "report.json").write_text(json.dumps(report))

    again = rerender(tmp_path)
    assert again["settings"][0]["recommended"] == chosen
    saved = json.loads((tmp_path / "report.json").read_text())["settings"][0]
    assert saved["recommended"] == chosen
    assert saved["targets"]["speedup_2x_within_spread"]["best_within_spread"] == chosen
    assert f"**{chosen}**" in (tmp_path / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "report.json", "report.md"]

    # Just beyond the spread it drops out, and the measured recommendation comes back.
    rows[chosen]["fid"] = limit + 1e-6
    (tmp_path / "report.json").write_text(json.dumps(report))
    saved = rerender(tmp_path)["settings"][0]
    assert saved["recommended"] == before and saved["methods"][chosen]["within_seed_spread"] is False


def test_rerender_recomputes_a_target_from_edited_rows(tmp_path):
    report = _saved_report(tmp_path)
    entry = report["settings"][0]
    half = next(r for r in entry["methods"].values() if r["family"] == "static_depth" and r["block_fraction"] == 0.5)
    assert entry["targets"]["full_depth_clearly_better_than_half"]["met"] is True
    half["fid"] = entry["methods"]["full"]["fid"] + entry["seed_spread"]  # a gap of exactly the spread is not "clearly"
    (tmp_path / "report.json").write_text(json.dumps(report))
    target = rerender(tmp_path)["settings"][0]["targets"]["full_depth_clearly_better_than_half"]
    assert target["met"] is False and target["half_depth_fid"] == half["fid"]
    assert "Target `full_depth_clearly_better_than_half`: NOT MET" in (tmp_path / "report.md").read_text()


def test_the_recommendation_becomes_the_default_of_a_pipeline_folder(tmp_path):
    report = _saved_report(tmp_path)
    entry = report["settings"][0]
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "EarlyExitDiTPipeline", "exit_config": None,
                                                        "scheduler": ["diffusers", "DDIMScheduler"]}))
    result = set_recommended_exit_config(tmp_path / "report.json", model)
    expected = EarlyExitConfig.from_dict(entry["methods"][entry["recommended"]]["exit_config"]).to_dict()
    assert result == {"method": entry["recommended"], "exit_config": expected,
                      "num_inference_steps": entry["steps"], "guidance_scale": entry["guidance_scale"]}
    index = json.loads((model / "model_index.json").read_text())
    assert index == {"_class_name": "EarlyExitDiTPipeline", "exit_config": expected,
                     "scheduler": ["diffusers", "DDIMScheduler"]}
    assert [p.name for p in model.iterdir()] == ["model_index.json"]

    with pytest.raises(ValueError, match=r"has no setting 'glyphs'; it has \['digits'\]"):
        set_recommended_exit_config(tmp_path / "report.json", model, setting="glyphs")
    entry["recommended"] = None
    (tmp_path / "report.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="recommends no early-exit method for 'digits'"):
        set_recommended_exit_config(tmp_path / "report.json", model)
    with pytest.raises(FileNotFoundError, match="pipeline index"):
        set_recommended_exit_config(COMMITTED_REPORT, tmp_path / "missing")

"""The presets on our own models (`python -m bench bench`): the report of a toy run, every family scored."""

import json

import pytest

from bench.presets import Preset, run
from ee_diffusion import EarlyExitConfig
from ee_diffusion.eval.features import load_feature_net
from ee_diffusion.eval.quality import QualityEvaluator, real_images
from ee_diffusion.operating_point import OperatingPoint
from tests._eval_pipes import tiny_dit_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_bench_writes_report_with_loadable_exit_configs(tmp_path):
    pipe = tiny_dit_pipeline(num_layers=4, heads=True)
    pipe.save_pretrained(tmp_path / "model")
    preset = Preset(num_images=10, reference_steps=3, extra_seeds=1, frontier=(("ddim", (2,)), ("dpmpp", (2,))),
                    grid=(("ddim", 3), ("dpmpp", 2)), cache_grid=(("ddim", 3),), static_fractions=(0.5,),
                    threshold_fractions=(0.6,), budgets=(0.5,), threshold_budgets=(0.6,), distil=True,
                    tail_thresholds=(0.1,), fbc_thresholds=(0.5,), taylorseer_intervals=(2,), mag_thresholds=(0.1,),
                    sea_thresholds=(0.2,), calib_images=4, calib_buckets=2, calib_fractions=(0.5,), timing_batches=(4, 2),
                    timing_repeats=1, timing_warmup=0, flops_images=1, sample_batch=10, bootstrap=20,
                    overhead_repeats=1)
    report = run(preset, tmp_path / "out", model_paths={"digits": str(tmp_path / "model")}, progress=False)
    # The report files, and the images of every method as shards (a rerun of the same OUT resumes from them).
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pareto.png", "report.json", "report.md", "samples"]
    assert any((tmp_path / "out" / "samples" / "digits").rglob("shard-*.safetensors"))
    assert (tmp_path / "out" / "pareto.png").read_bytes().startswith(b"\x89PNG")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    entry = data["settings"][0]
    rows = entry["rows"]
    families = {r["family"] for r in rows.values()}
    assert {"reference", "seed", "fewer_steps", "static_depth", "ase", "deediff", "calibrated_schedule",
            "calibrated_thresholds", "distilled", "tail_cache", "first_block_cache", "taylorseer_cache", "mag_cache",
            "sea_cache"} <= families, entry["not_attached"]
    assert {r["solver"] for r in rows.values()} == {"ddim", "dpmpp"}
    for row in rows.values():
        if row["exit_config"] is not None:
            EarlyExitConfig.from_dict(row["exit_config"])  # every config loads back
        assert len(row["fid_resamples"]) == 20 and "dfid_reference" in row and "psnr_db" in row["fidelity"]
        # Scored under both shipped digits nets; quality must hold under each of them.
        assert sorted(row["fid_by_net"]) == sorted(row["dfid_reference_by_net"]) == ["net-digits", "net-digits-pool"]
        assert row["holds_quality"] == all(d["low"] <= 0 or d["high"] < 0.1 * rows["ddim3"]["fid_by_net"][net]
                                           for net, d in row["dfid_reference_by_net"].items())
        if row["family"] != "seed":
            assert row["timing"]["4"]["rounds"] == 1
    # The floor against torchmetrics' FID (an independent implementation) on the same two real sets, as uint8
    # images hold them (the generated images are scored so too).
    as_saved = lambda x: (x.clamp(0, 1) * 255).round() / 255  # noqa: E731
    reference, _ = real_images("digits", "reference")
    floor_images, _ = real_images("digits", "floor")
    direct = QualityEvaluator(load_feature_net("digits"), as_saved(reference)).score(as_saved(floor_images), kid=False)["fid"]
    assert entry["floor"]["fid"] == pytest.approx(direct, rel=1e-6)
    assert rows["ddim3"]["fid"] > 3 * entry["floor"]["fid"]  # a random model
    assert entry["seed_spread"] == pytest.approx(abs(rows["ddim3"]["fid"] - rows["ddim3_seed1"]["fid"]))
    assert entry["decisions"]["recommended"] in rows and report["settings"][0]["decisions"] == entry["decisions"]
    OperatingPoint.from_dict(entry["operating_point"])
    assert "**Verdict.**" in (tmp_path / "out" / "report.md").read_text()

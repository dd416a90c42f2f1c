"""A preset report re-rendered after an edit, and `python -m bench publish`: a bench report's operating point, or a
confirmed search's, into a pipeline folder."""

import json
import shutil
from pathlib import Path

import pytest
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from bench.cli import main
from bench.presets import markdown
from bench.publish import publish_search, training_markdown, write_operating_point
from ee_diffusion.default_model import DEFAULT_MODEL_DIR
from ee_diffusion.eval import report as report_files
from ee_diffusion.operating_point import OperatingPoint
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.testing import tiny_dit
from tests.test_benchmarks_report import BASE, CONFIDENCE, REF_FID, _row, _rows


def rerender(out):
    """A preset report's files re-decided and re-rendered (with the presets' Markdown)."""
    return report_files.rerender(out, markdown)


def _entry(rows):
    return {
        "setting": "digits", "num_blocks": 8, "num_classes": 10, "num_images": 400, "reference_steps": 25,
        "reference": "ddim25", "guidance_scale": 1.0,
        "solvers": {"ddim": {"class": "DDIMScheduler", "config": dict(DDIMScheduler().config)},
                    "dpmpp": {"class": "DPMSolverMultistepScheduler",
                              "config": dict(DPMSolverMultistepScheduler(algorithm_type="dpmsolver++").config)}},
        "feature_net": {"name": "digits", "features": 64}, "real_images": 899,
        "floor": {"fid": 2.0, "num_images": 898}, "seed_spread": 0.5,
        "bootstrap": {"resamples": BASE.size, "confidence": CONFIDENCE, "seed": 0}, "rows": rows,
        "operating_point": {"measured_in": ""}, "not_attached": {},
        "timing": {"batches": [64], "repeats": 1, "warmup": 0, "what": "crafted"},
        "overhead": {"rows_per_call": 64, "hook_overhead_fraction": 0.0, "gather_scatter_overhead_fraction": 0.0},
        "peak_memory": {"ddim25": {"peak_above_start_mib": 1.0}},
    }


def _saved_report(tmp_path):
    rows = _rows(_row("dpmpp10", "fewer_steps", 0.0, 0.2, solver="dpmpp", steps=10, blocks=0.40, time=0.41),
                 _row("dpmpp8", "fewer_steps", 1.2, 0.2, solver="dpmpp", steps=8, blocks=0.32, time=0.33),
                 _row("static7@dpmpp10", "static_depth", 1.5, 0.2, solver="dpmpp", steps=10, blocks=0.35, time=0.36,
                      config=7))
    for r in rows.values():
        r["fidelity"] = {"psnr_db": 30.0, "ssim": 0.99, "feature_distance": 1.0}
        r["timing"] = {"64": {"speedup": r["speedup"]}}
    report = {"preset": "custom", "command": "crafted", "elapsed_s": 1.0, "settings": [_entry(rows)],
              "environment": {"torch": "x", "threads": 2, "machine": "x", "cpu_count": 2}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    return rerender(tmp_path)


def test_rerender_redecides_from_edited_measurements(tmp_path):
    report = _saved_report(tmp_path)
    entry = report["settings"][0]
    assert entry["decisions"]["recommended"] == "dpmpp10" and entry["operating_point"]["exit_config"] is None
    # The exit point becomes as good as the reference: it now beats dpmpp8 at its cost and is recommended.
    row = entry["rows"]["static7@dpmpp10"]
    row.update(fid=REF_FID, fid_resamples=[v - 1.5 for v in row["fid_resamples"]])
    (tmp_path / "report.json").write_text(json.dumps(report))
    again = rerender(tmp_path)["settings"][0]
    assert again["decisions"]["recommended"] == "static7@dpmpp10"
    assert again["operating_point"]["exit_config"] == row["exit_config"]
    text = (tmp_path / "report.md").read_text()
    assert "Recommended operating point: `static7@dpmpp10`" in text and "uses early exit" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "report.json", "report.md"]


def test_a_report_never_holds_nan(tmp_path):
    report = _saved_report(tmp_path)
    report["settings"][0]["calibration"] = {"deviation": [float("nan"), float("-inf"), 1.0]}
    report_files.write_report(report, tmp_path, markdown)
    saved = json.loads((tmp_path / "report.json").read_text())  # strict JSON: no NaN or Infinity tokens
    assert saved["settings"][0]["calibration"] == {"deviation": [None, None, 1.0]}


#: The committed operating-point search of the demo model (confirmed on 2000 held-out images).
SEARCH = Path(__file__).resolve().parents[2] / "docs" / "operating-point-search-digits" / "search.json"


def test_publish_writes_the_point_evaluation_and_training_md_from_one_report(tmp_path, capsys):
    report = _saved_report(tmp_path)
    row = report["settings"][0]["rows"]["static7@dpmpp10"]
    row.update(fid=REF_FID, fid_resamples=[v - 1.5 for v in row["fid_resamples"]])
    (tmp_path / "report.json").write_text(json.dumps(report))
    rerender(tmp_path)
    model = tmp_path / "model"
    EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=8), scheduler=DDIMScheduler()).save_pretrained(model)
    training = {"title": "tiny", "description": ["A tiny model."],
                "stages": [{"heading": "stage 1", "columns": ["step", "loss"], "rows": [["1", "0.5"]]}]}
    (model / "training.json").write_text(json.dumps(training))
    assert main(["publish", "--report", str(tmp_path / "report.json"), "--setting", "digits", "--model", str(model)]) == 0
    assert "uses early exit" in capsys.readouterr().out
    evaluation = json.loads((model / "evaluation.json").read_text())
    index = json.loads((model / "model_index.json").read_text())
    assert evaluation["operating_point"] == index["operating_point"]
    assert evaluation["recommended"]["name"] == "static7@dpmpp10"
    text = (model / "TRAINING.md").read_text()
    assert text == training_markdown(training, evaluation)
    assert "| 1 | 0.5 |" in text and "## Operating point" in text and "static7@dpmpp10" in text



def test_the_operating_point_becomes_the_default_of_a_pipeline_folder(tmp_path):
    report = _saved_report(tmp_path)
    entry = report["settings"][0]
    row = entry["rows"]["static7@dpmpp10"]
    row.update(fid=REF_FID, fid_resamples=[v - 1.5 for v in row["fid_resamples"]])
    (tmp_path / "report.json").write_text(json.dumps(report))
    rerender(tmp_path)
    model = tmp_path / "model"
    EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=8), scheduler=DDIMScheduler()).save_pretrained(model)
    point = write_operating_point(tmp_path / "report.json", model, "digits", measured_in="crafted report")
    pipe = EarlyExitDiTPipeline.from_pretrained(model)
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    assert pipe.operating_point.to_dict() == point and point["measured_in"] == "crafted report"
    pipe.set_progress_bar_config(disable=True)
    out = pipe(class_labels=[1, 2], output_type="np")
    assert out.operating_point["num_inference_steps"] == 10 and out.operating_point["source"] == "default operating point"
    assert out.exit_stats.num_calls == 10 and out.exit_stats.depth_fraction == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match=r"has no setting 'glyphs'; it has \['digits'\]"):
        write_operating_point(tmp_path / "report.json", model, "glyphs", measured_in="")


def test_publish_search_makes_the_confirmed_point_the_folders_default(tmp_path):
    data = json.loads(SEARCH.read_text())
    # Another step count than the demo model's own default, so that the published point is seen to take over.
    data["operating_point"]["num_inference_steps"] = 12
    path, folder = tmp_path / "search.json", tmp_path / "model"
    path.write_text(json.dumps(data))
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    assert EarlyExitDiTPipeline.from_pretrained(folder).operating_point.num_inference_steps != 12
    evaluation = publish_search(path, folder)
    pipe = EarlyExitDiTPipeline.from_pretrained(folder)
    found = OperatingPoint.from_dict(data["operating_point"])
    assert (pipe.operating_point.num_inference_steps, pipe.operating_point.exit_config) == \
        (found.num_inference_steps, found.exit_config)
    assert pipe.operating_point.measured_in.startswith(str(path))
    assert type(pipe.scheduler).__name__ == found.scheduler
    assert evaluation["operating_point_search"]["chosen"] == data["chosen"]
    assert json.loads((folder / "evaluation.json").read_text())["operating_point"] == pipe.operating_point.to_dict()
    text = (folder / "TRAINING.md").read_text()
    assert f"`{data['chosen']}`" in text and f"{data['settings']['holdout_images']} held-out images" in text
    # A UniPC point (the search offers UniPC too) is published with the options it was measured with.
    data = json.loads(path.read_text())
    data["operating_point"].update(scheduler="UniPCMultistepScheduler", scheduler_options={"solver_order": 2})
    path.write_text(json.dumps(data))
    publish_search(path, folder)
    assert type(EarlyExitDiTPipeline.from_pretrained(folder).scheduler).__name__ == "UniPCMultistepScheduler"
    # A scheduler class diffusers does not have is refused before anything is written.
    before = (folder / "model_index.json").read_text()
    data["operating_point"]["scheduler"] = "NoSuchScheduler"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'NoSuchScheduler' is not a diffusers scheduler class"):
        publish_search(path, folder)
    assert (folder / "model_index.json").read_text() == before
    data["confirmed"] = False
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="confirmed no operating point"):
        publish_search(path, folder)

"""One source of truth: each shipped model's operating point, evaluation.json and TRAINING.md agree with the
committed full bench report they were published from, and the committed Markdown is what the code renders."""

import json
from pathlib import Path

import pytest

from bench.models import DEEP_MODEL_DIR, GLYPHS_MODEL_DIR
from bench.presets import markdown
from bench.publish import evaluation_summary, search_summary, training_markdown
from ee_diffusion.default_model import DEFAULT_MODEL_DIR
from ee_diffusion.pipelines import EarlyExitDiTPipeline

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = {"digits": DEFAULT_MODEL_DIR, "glyphs": GLYPHS_MODEL_DIR, "digits-deep": DEEP_MODEL_DIR}


def _report(setting):
    path = ROOT / "docs" / f"bench-full-{setting}" / "report.json"
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("setting", sorted(SHIPPED))
def test_the_shipped_operating_point_is_the_committed_recommendation(setting):
    path, report = _report(setting)
    entry = {s["setting"]: s for s in report["settings"]}[setting]
    assert report["preset"] == "full" and entry["num_images"] >= 2000
    index = json.loads((SHIPPED[setting] / "model_index.json").read_text())
    evaluation = json.loads((SHIPPED[setting] / "evaluation.json").read_text())
    shipped = dict(index["operating_point"])
    search = evaluation.get("operating_point_search")
    if search is not None:  # the point of a confirmed operating-point search, published over the report's
        found = json.loads((ROOT / search["search"]).read_text())
        assert found["confirmed"] and found["chosen"] == search["chosen"]
        recommended, source = dict(found["operating_point"]), search["search"]
    else:
        recommended, source = dict(entry["operating_point"]), f"docs/bench-full-{setting}/report.json"
    assert shipped.pop("measured_in").startswith(source)
    recommended.pop("measured_in")
    assert shipped == recommended
    assert index["scheduler"] == ["diffusers", recommended["scheduler"]]
    pipe = EarlyExitDiTPipeline.from_pretrained(SHIPPED[setting])
    assert type(pipe.scheduler).__name__ == recommended["scheduler"]
    assert pipe.operating_point.to_dict()["exit_configs_by_steps"] == recommended["exit_configs_by_steps"]


@pytest.mark.parametrize("setting", sorted(SHIPPED))
def test_evaluation_json_and_training_md_come_from_the_same_report(setting):
    path, report = _report(setting)
    folder = SHIPPED[setting]
    evaluation = json.loads((folder / "evaluation.json").read_text())
    index = json.loads((folder / "model_index.json").read_text())
    assert evaluation["operating_point"] == index["operating_point"]
    expected = evaluation_summary(report, setting, evaluation["report"])
    expected["operating_point"] = index["operating_point"]
    if "operating_point_search" in evaluation:
        ref = evaluation["operating_point_search"]["search"]
        expected["operating_point_search"] = search_summary(json.loads((ROOT / ref).read_text()), ref)
    assert evaluation == json.loads(json.dumps(expected))
    training = json.loads((folder / "training.json").read_text())
    assert (folder / "TRAINING.md").read_text() == training_markdown(training, evaluation)


@pytest.mark.parametrize("setting", sorted(SHIPPED))
def test_committed_report_markdown_is_rendered_from_its_json(setting):
    path, report = _report(setting)
    assert (path.parent / "report.md").read_text() == markdown(report)


@pytest.mark.parametrize("setting, heads", [("digits-deep", True), ("digits-deep-pretrained", False)])
def test_the_deep_digits_models_load_as_28_block_pipelines(setting, heads):
    from bench.models import load_setting_pipeline

    pipe = load_setting_pipeline(setting)
    assert len(pipe.transformer.transformer_blocks) == 28 and (pipe.exit_heads is not None) == heads
    out = pipe(class_labels=[3, 7], num_inference_steps=2, output_type="np")
    assert out.images.shape == (2, 8, 8, 1)

"""The committed `bench --pipeline` run on the demo model agrees with the preset run on the same model."""

import json
from pathlib import Path

from bench.agreement import compare
from bench.agreement import markdown as agreement_markdown
from ee_diffusion.eval.report import markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_committed_digits_run_is_rendered_from_its_json_and_agrees_with_the_settings_path():
    folder = DOCS / "bench-pipeline-digits"
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "report.md").read_text() == markdown(report)
    assert report["command"].startswith("ee-diffusion bench --threads 2 --pipeline ee_diffusion/assets/digits-dit")
    settings = json.loads((DOCS / "bench-ci-digits" / "report.json").read_text())
    result = json.loads((folder / "agreement.json").read_text())
    assert result["rows"] == compare(report["settings"][0], settings["settings"][0])["rows"]
    assert (folder / "agreement.md").read_text() == agreement_markdown(result, result["commands"])
    assert result["agree"] and len(result["rows"]) >= 5

"""`python -m bench bench-compile`: planned exit policies under torch.compile on one of our models."""

import json

import pytest

from bench import compile_bench
from bench.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_bench_compile_reports_no_graph_break_for_planned_policies_on_a_shipped_model(tmp_path):
    """`python -m bench bench-compile` (aot_eager here; the committed run uses inductor) on the 8-block digits DiT."""
    assert main(["bench-compile", "--setting", "digits", "--backend", "aot_eager", "--batch", "4", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "compile.json").read_text())
    assert set(report["results"]) == {"stock", "static4", "ase_released"}
    for name, result in report["results"].items():
        assert result["graph_breaks"] == 0, (name, result["break_reasons"])
        assert result["relative_max_difference"] < 1e-5, name
    assert (tmp_path / "compile.md").read_text() == compile_bench.markdown(report)

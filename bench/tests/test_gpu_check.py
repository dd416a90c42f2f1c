"""The GPU check (`python -m bench.gpu_check`): every part listed with its status, on CPU at small shapes."""

import json

import pytest
import torch

from bench.gpu_check import main, run, run_part
from bench.gpu_report import markdown

GPU_CHECK_PARTS = ["timings dit-xl-2", "timings pixart-alpha-512", "timings sd3-medium-512",
                   "compile dit-xl-2 static_half", "compile dit-xl-2 per_row_schedule",
                   "attention dit-xl-2", "attention pixart-alpha-512", "attention sd3-medium-512"]


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_small_shapes_on_cpu(tmp_path):
    report = run(tmp_path, small=True, repeats=1, warmup=0)
    status = {p["part"]: p["status"] for p in report["parts"]}
    assert list(status) == GPU_CHECK_PARTS
    assert all(status[p] == "ran" for p in GPU_CHECK_PARTS[:5]), report["parts"]
    assert set(report["timings"]) == {"dit-xl-2", "pixart-alpha-512", "sd3-medium-512"}
    for shape in report["timings"].values():
        methods = shape["batches"]["2"]["results"]
        assert {"full", "hooks_off", "heads_no_exit", "static_half", "ase_t900"} <= set(methods)
        assert all(m["median_s"] > 0 for m in methods.values()) and methods["full"]["ratio_to_reference"] == 1.0
    compiled = report["compile"]["dit-xl-2"]
    assert compiled["backend"] == "aot_eager"
    for policy in ("static_half", "per_row_schedule"):
        # planned policies with a declared layout: one graph, equal to eager
        assert compiled[policy]["graph_breaks"] == 0 and compiled[policy]["relative_max_difference"] < 1e-5
    # No CUDA here, so no xformers kernels: the attention parts are skipped and say why, never dropped.
    for part in report["parts"][5:]:
        assert part["status"] == "skipped" and "xformers" in part["reason"], part
    assert report["all_ran"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(report))
    text = (tmp_path / "gpu_check.md").read_text()
    assert text == markdown(saved)  # rendered from the JSON
    table = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    for part in report["parts"]:
        assert part["status"] in table[part["part"]]  # every part has its row with its status
        if part["status"] != "ran":
            assert f"- `{part['part']}`: skipped: {part['reason']}" in text
    assert "NOT ALL PARTS RAN, 5 of 8" in text and "## torch.compile (dit-xl-2" in text


@pytest.mark.slow
def test_gpu_check_stops_starting_parts_when_its_budget_is_spent(tmp_path, capsys):
    assert main(["--small", "--shapes", "dit-xl-2", "--out", str(tmp_path), "--budget-s", "0"]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [p["part"] for p in report["parts"]] == [
        "timings dit-xl-2", "compile dit-xl-2 static_half", "compile dit-xl-2 per_row_schedule", "attention dit-xl-2"]
    assert all(p["status"] == "skipped" and p["reason"] == "time budget spent (0 s)" for p in report["parts"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu_check: NOT ALL PARTS RAN, 0 of 4;") and "time budget spent" in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run on a machine without CUDA")
def test_gpu_check_without_cuda_lists_every_part_as_skipped_and_fails(tmp_path):
    assert main(["--out", str(tmp_path)]) == 1  # builds nothing: returns at once
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [p["part"] for p in report["parts"]] == GPU_CHECK_PARTS
    assert all(p["status"] == "skipped" and p["reason"].startswith("no CUDA device") for p in report["parts"])
    assert "no CUDA device" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_part_that_raises_or_outruns_the_budget_is_reported():
    import time

    report = {"parts": [], "budget_s": 0.3}

    def broken():
        raise RuntimeError("no kernel image is available")

    assert run_part(report, "compile x", broken, time.perf_counter() + 10) is None
    started = time.perf_counter()
    assert run_part(report, "timings x", lambda: time.sleep(10), started + 0.3) is None
    assert time.perf_counter() - started < 3  # stopped at the deadline, not after the part's 10 s
    assert run_part(report, "attention x", lambda: 7, time.perf_counter() + 10) == 7
    failed, stopped, ran = report["parts"]
    assert failed["status"] == "failed" and failed["reason"] == "RuntimeError: no kernel image is available"
    assert "broken" in failed["traceback"]
    assert stopped["status"] == "stopped" and stopped["reason"].startswith("time budget spent (0 s): cut off")
    assert ran["status"] == "ran" and ran["reason"] is None

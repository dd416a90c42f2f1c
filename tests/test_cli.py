"""The `ee-diffusion` command line, run in-process at toy sizes: what each command writes and prints."""

import json

import pytest

from ee_diffusion.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_engine_writes_its_json_and_table(tmp_path, capsys):
    assert main(["bench-engine", "--out", str(tmp_path), "--repeats", "1", "--batch-size", "4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine_bench.json", "engine_bench.md"]
    report = json.loads((tmp_path / "engine_bench.json").read_text())
    methods = ["full", "hooks_off", "heads_no_exit", "half_exit_planned", "half_exit_dynamic", "static_depth_2"]
    assert list(report["results"]) == methods
    for name, row in report["results"].items():
        assert set(row) == {"median_s", "min_s", "ratio_to_reference"}, name
        assert row["median_s"] > 0 and row["ratio_to_reference"] > 0
    assert report["results"]["full"]["ratio_to_reference"] == 1.0
    setting = report["setting"]
    assert (setting["batch_size"], setting["repeats"], setting["num_layers"]) == (4, 1, 12)
    assert setting["ideal_half_exit_ratio"] == pytest.approx((2 + 0.5 * 10) / 12)
    table = (tmp_path / "engine_bench.md").read_text().splitlines()
    assert table[0] == "| method | median ms | ratio to full |"
    assert [line.split(" | ")[0].lstrip("| ") for line in table[2:]] == methods
    assert table[2] in capsys.readouterr().out


def test_demo_writes_the_grid_and_prints_the_measured_speedup(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--batch-size", "4"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]
    assert (tmp_path / "demo.png").read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "batch 4" in out and "stock model: 2 DDIM steps, no hooks" in out and "measured speedup: " in out
    assert "a call without arguments (default operating point): DPMSolverMultistepScheduler" in out
    assert f"wrote {tmp_path / 'demo.png'}" in out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], r"num_inference_steps must be an integer >= 1 \(sampling steps\), got 0"),
    (["demo", "--batch-size", "-2"], r"batch_size must be an integer >= 1 \(rows per batch\), got -2"),
])
def test_demo_rejects_bad_counts_before_loading_anything(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        main([*argv, "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as error:
        main(["benchmark"])
    assert error.value.code == 2
    assert "invalid choice: 'benchmark'" in capsys.readouterr().err


def test_cli_setting_names_are_the_benchmark_settings():
    from ee_diffusion.cli import SETTING_NAMES
    from ee_diffusion.default_model import SETTINGS

    assert SETTING_NAMES == tuple(SETTINGS)


def test_the_search_reference_is_named_in_full_or_refused(tmp_path, capsys):
    args = ["calibrate", "--model", "digits", "--kind", "operating-point", "--tolerance", "0.1",
            "--out", str(tmp_path / "search.json")]
    for bad in ("dpmpp", "heun:20", "ddim:0"):
        with pytest.raises(SystemExit):  # argparse: SOLVER:STEPS
            main([*args, "--reference", bad])
    assert "a reference is SOLVER:STEPS" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="give --reference ddim:20 or --reference-steps 10, not both"):
        main([*args, "--reference", "ddim:20", "--reference-steps", "10"])
    assert not (tmp_path / "search.json").exists()

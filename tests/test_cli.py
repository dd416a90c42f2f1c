"""The `ee-diffusion` command line, run in-process at toy sizes: what each command writes and prints."""

import re

import pytest

from ee_diffusion.cli import main
from ee_diffusion.testing import tiny_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_demo_writes_the_grid_and_prints_the_measured_speedup(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--batch-size", "4"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]
    assert (tmp_path / "demo.png").read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "batch 4" in out and "stock model: 2 DDIM steps, no hooks" in out and "measured speedup of the operating point: " in out
    assert "fewer steps: DPMSolverMultistepScheduler" in out and "rounds " in out
    assert "a call without arguments (default operating point): DPMSolverMultistepScheduler" in out
    assert f"wrote {tmp_path / 'demo.png'}" in out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
    (["demo", "--batch-size", "-2"], "argument --batch-size: must be an integer >= 1, got -2"),
])
def test_demo_rejects_bad_counts_before_loading_anything(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as error:  # argparse refuses the flag
        main([*argv, "--out", str(tmp_path)])
    assert error.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["benchmark", "bench-engine", "bench-caches", "publish"])
def test_an_unknown_command_exits_with_usage(capsys, command):
    """The benches on our own models are the repository's `python -m bench`, not commands of the package."""
    with pytest.raises(SystemExit) as error:
        main([command])
    assert error.value.code == 2
    assert f"invalid choice: '{command}'" in capsys.readouterr().err


def test_bench_needs_the_users_pipeline_folder(capsys):
    with pytest.raises(SystemExit) as error:
        main(["bench", "--preset", "ci"])
    assert error.value.code == 2
    assert "the following arguments are required: --pipeline" in capsys.readouterr().err


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
    assert main([*args, "--reference", "ddim:20", "--reference-steps", "10"]) == 2
    assert ("ee-diffusion calibrate: error: give --reference ddim:20 or --reference-steps 10, not both"
            in capsys.readouterr().err)
    assert not (tmp_path / "search.json").exists()


@pytest.fixture
def stock_dit(tmp_path):
    folder = tmp_path / "dit"
    tiny_pipeline("dit", num_layers=2).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True])
def test_the_search_deletes_its_samples_unless_kept_and_says_how_large_they_were(stock_dit, tmp_path, capsys, keep):
    cache = tmp_path / "cache"
    (cache).mkdir()
    (cache / "notes.txt").write_text("a user's file beside the shards is never deleted\n")
    argv = ["calibrate", "--model", str(stock_dit), "--kind", "operating-point", "--min-psnr", "10", "--classes", "1",
            "--images", "2", "--search-steps", "2", "--reference-steps", "3", "--static-fractions", "0.5",
            "--tail-thresholds", "--batch-size", "2", "--cache-dir", str(cache), "--out", str(tmp_path / "s.json")]
    assert main([*argv, *(["--keep-samples"] if keep else [])]) == 0
    out = capsys.readouterr().out
    runs = [p.name for p in cache.iterdir() if p.is_dir()]
    assert re.search(rf"\d+\.\d MB of samples in \d+ runs {'kept in' if keep else 'deleted from'} {cache}", out), out
    assert (cache / "notes.txt").exists() and (len(runs) > 2 if keep else runs == [])


@pytest.mark.slow
def test_calibrate_shows_its_progress_and_warns_of_bf16_on_the_cpu(stock_dit, tmp_path):
    """As a user runs it (a new process): the calibration's progress lines on stderr, and a warning that bf16 on the
    CPU is slower than float32."""
    import subprocess
    import sys
    from pathlib import Path

    argv = ["calibrate", "--model", str(stock_dit), "--kind", "block-forecast", "--min-psnr", "10", "--classes", "1",
            "--images", "2", "--steps", "4", "--forecast-intervals", "2", "--forecast-windows", "1",
            "--forecast-orders", "1", "--dtype", "bfloat16", "--out", str(tmp_path / "p.json")]
    done = subprocess.run([sys.executable, "-m", "ee_diffusion.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1]),
                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: --dtype bfloat16 on the CPU" in done.stderr
    assert re.search(r"interval 2 order 1 window \(1, False\): PSNR [\d.]+ dB", done.stderr), done.stderr[-3000:]

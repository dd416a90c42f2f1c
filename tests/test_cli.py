"""The `ee-diffusion` command line, run in-process at toy sizes: what each command writes and prints."""

import pytest

from ee_diffusion.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
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
    with pytest.raises(SystemExit, match="give --reference ddim:20 or --reference-steps 10, not both"):
        main([*args, "--reference", "ddim:20", "--reference-steps", "10"])
    assert not (tmp_path / "search.json").exists()

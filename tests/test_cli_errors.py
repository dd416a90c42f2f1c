"""Every subcommand with one bad argument: exit status 2, a one-paragraph message that names the argument, no
traceback, and every path it was given left as it was (issue 37's corpus; it grows with each subcommand).

The commands run in-process on tiny stand-ins (`ee_diffusion.testing`) saved into one folder per module; a
snapshot of that folder (every path, size and modification time) before and after each refused command shows
that nothing was created, changed or removed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from diffusers import DDIMScheduler
from PIL import Image

from ee_diffusion import EarlyExitConfig
from ee_diffusion.cli import main as ee_main
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import tiny_dit, tiny_pipeline
from ee_diffusion.training.config import ExperimentConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The inputs every case draws on: a stock DiT folder, one of ours (4 blocks), real images, a file where
    folders are expected, a non-empty folder, a policy for 6 blocks, a truncated weights file, an unconfirmed
    search, training configs."""
    root = tmp_path_factory.mktemp("inputs")
    tiny_pipeline("dit", num_layers=2).save_pretrained(root / "stock")
    EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler()).save_pretrained(root / "ours")
    (root / "real").mkdir()
    for i in range(10):
        Image.new("L", (8, 8), 25 * i).save(root / "real" / f"{i}.png")
    (root / "classes" / "0").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (16, 16), (20 * i, 0, 0)).save(root / "classes" / "0" / f"{i}.png")
    (root / "afile").write_text("not a folder\n")
    (root / "full").mkdir()
    (root / "full" / "keep.txt").write_text("someone's file\n")
    (root / "deep.json").write_text(EarlyExitConfig(StaticDepth(6)).to_json())
    shutil.copytree(root / "stock", root / "truncated")
    weights = next((root / "truncated" / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    unconfirmed = {"goal": {"tolerance": 0.1}, "reference": {}, "chosen": None, "confirmed": False,
                   "why": "no candidate held quality", "operating_point": {}, "candidates": [], "tries": [],
                   "settings": {}}
    (root / "unconfirmed.json").write_text(json.dumps(unconfirmed))
    config = json.loads((Path(__file__).parents[1] / "ee_diffusion/training/configs/dit-xl2-heads.json").read_text())
    config["train"]["bogus"] = 1
    (root / "unknown-key.json").write_text(json.dumps(config))
    ExperimentConfig().save(root / "own-model.json")
    return root


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# Shared argument lists: `{R}` is the inputs folder.
BENCH = ["bench", "--pipeline", "{R}/ours", "--real", "{R}/real", "--features", "digits", "--steps", "2",
         "--num-images", "4", "--timing-repeats", "0", "--bootstrap", "5"]
STOCK = ["--model", "{R}/stock", "--classes", "1", "--steps", "2", "--images", "2"]
SEARCH = ["calibrate", "--kind", "operating-point", *STOCK, "--min-psnr", "20", "--search-steps", "2",
          "--out", "{R}/new/search.json"]
PREPARE = ["--config", "dit-xl2-heads", "--pipeline", "{R}/stock", "--images", "{R}/classes", "--cache-dir",
           "{R}/new-cache"]

# (command line, a regex the message must match: it names the argument). "bench:" runs `python -m bench`.
CASES = {
    # demo
    "demo steps": (["demo", "--steps", "0", "--out", "{R}/new"], "argument --steps: must be an integer >= 1"),
    "demo batch": (["demo", "--batch-size", "x", "--out", "{R}/new"], "argument --batch-size"),
    "demo out file": (["demo", "--out", "{R}/afile"], "--out '.*afile' is a file"),
    "demo out under file": (["demo", "--out", "{R}/afile/sub"], "--out .* lies under .*afile'?, which is a file"),
    # bench --pipeline
    "bench out file": ([*BENCH, "--out", "{R}/afile"], "--out '.*afile' is a file"),
    "bench cache file": ([*BENCH, "--cache-dir", "{R}/afile", "--out", "{R}/new"], "--cache-dir '.*afile' is a file"),
    "bench policy too deep": ([*BENCH, "--methods", "{R}/deep.json", "--out", "{R}/new"],
                              "method '.*deep.json': StaticDepth asks for depth 6 but the model has 4 blocks"),
    "bench static too deep": ([*BENCH, "--methods", "static:9", "--out", "{R}/new"],
                              r"method 'static:9': static:D needs D blocks in \[1, 3\]"),
    "bench method form": ([*BENCH, "--methods", "bogus:3", "--out", "{R}/new"], "method 'bogus:3': expected one of"),
    "bench method file": ([*BENCH, "--methods", "{R}/none.json", "--out", "{R}/new"], "no exit-config file"),
    "bench images": ([*BENCH, "--num-images", "1", "--out", "{R}/new"], "argument --num-images: must be an integer >= 2"),
    "bench batch": ([*BENCH, "--batch-size", "0", "--out", "{R}/new"], "argument --batch-size"),
    "bench frontier": ([*BENCH, "--frontier-steps", "0", "--out", "{R}/new"], "argument --frontier-steps"),
    "bench threads": ([*BENCH, "--threads", "0", "--out", "{R}/new"], "argument --threads"),
    "bench no folder": ([*BENCH[:2], "{R}/none", *BENCH[3:], "--out", "{R}/new"], "pipeline folder '.*none' does not exist"),
    "bench truncated": ([*BENCH[:2], "{R}/truncated", *BENCH[3:], "--out", "{R}/new"],
                        "truncated/transformer/diffusion_pytorch_model.safetensors"),
    "bench real missing": ([*BENCH[:4], "{R}/none", *BENCH[5:], "--out", "{R}/new"], "real image folder '.*none'"),
    "bench clip folder": ([*BENCH, "--features", "clip", "--out", "{R}/new"], "pass --clip FOLDER"),
    "bench device": ([*BENCH, "--device", "gpu", "--out", "{R}/new"], "--device must name a torch device"),
    "bench prompts": ([*BENCH, "--prompts", "{R}/deep.json", "--out", "{R}/new"], "not --prompts"),
    # calibrate --kind schedule (the default)
    "schedule budget": (["calibrate", *STOCK, "--budget", "1.5", "--out", "{R}/p.json"],
                        r"argument --budget: must be a finite number in \(0, 1\]"),
    "schedule model": (["calibrate", "--model", "{R}/none", "--budget", "0.5", "--out", "{R}/p.json"],
                       "--model '.*none' is neither a setting"),
    "schedule out under file": (["calibrate", *STOCK, "--budget", "0.5", "--out", "{R}/afile/p.json"],
                                "--out .* lies under .*afile'?, which is a file"),
    "schedule out folder": (["calibrate", *STOCK, "--budget", "0.5", "--out", "{R}/full"], "--out '.*full' is a folder"),
    "schedule steps": (["calibrate", *STOCK, "--budget", "0.5", "--steps", "0", "--out", "{R}/p.json"], "argument --steps"),
    "schedule device": (["calibrate", *STOCK, "--budget", "0.5", "--device", "cuda:x", "--out", "{R}/p.json"],
                        "--device must name a torch device"),
    "schedule truncated": (["calibrate", "--model", "{R}/truncated", "--budget", "0.5", "--out", "{R}/p.json"],
                           "truncated/transformer/diffusion_pytorch_model.safetensors"),
    # calibrate --kind thresholds / distil
    "thresholds goal": (["calibrate", "--kind", "thresholds", *STOCK, "--min-psnr", "20", "--out", "{R}/p.json"],
                        "--kind thresholds takes --budget as its goal, got --min-psnr"),
    "thresholds heads": (["calibrate", "--kind", "thresholds", *STOCK, "--budget", "0.5", "--heads", "{R}/none",
                          "--out", "{R}/p.json"], "--heads '.*none' is not an UncertaintyHeads folder"),
    "thresholds no heads": (["calibrate", "--kind", "thresholds", *STOCK, "--budget", "0.5", "--out", "{R}/p.json"],
                            "needs exit heads .*pass --heads FOLDER"),
    "distil threshold": (["calibrate", "--kind", "distil", *STOCK, "--budget", "0.5", "--threshold", "1.5",
                          "--out", "{R}/p.json"], "argument --threshold"),
    "distil heads file": (["calibrate", "--kind", "distil", *STOCK, "--budget", "0.5", "--heads", "{R}/afile",
                           "--out", "{R}/p.json"], "--heads '.*afile' is not an UncertaintyHeads folder"),
    # calibrate --kind tail-cache / block-forecast
    "tail goal": (["calibrate", "--kind", "tail-cache", *STOCK, "--tolerance", "0.1", "--out", "{R}/p.json"],
                  "--kind tail-cache takes --min-psnr or --budget as its goal, got --tolerance"),
    "tail orders": (["calibrate", "--kind", "tail-cache", *STOCK, "--min-psnr", "20", "--forecast-orders", "3",
                     "--out", "{R}/p.json"], "argument --forecast-orders"),
    "tail prompts": (["calibrate", "--kind", "tail-cache", "--model", "{R}/stock", "--prompts", "{R}/none.txt",
                      "--min-psnr", "20", "--out", "{R}/p.json"], "--prompts '.*none.txt' does not exist"),
    "forecast intervals": (["calibrate", "--kind", "block-forecast", *STOCK, "--min-psnr", "20",
                            "--forecast-intervals", "0", "--out", "{R}/p.json"],
                           "argument --forecast-intervals: must be an integer >= 2"),
    "forecast windows": (["calibrate", "--kind", "block-forecast", *STOCK, "--min-psnr", "20",
                          "--forecast-windows", "L2", "--out", "{R}/p.json"], "argument --forecast-windows"),
    "forecast verify": (["calibrate", "--kind", "block-forecast", *STOCK, "--min-psnr", "20",
                         "--verify-thresholds", "-1", "--out", "{R}/p.json"], "argument --verify-thresholds"),
    "forecast goal": (["calibrate", "--kind", "block-forecast", *STOCK, "--tolerance", "0.1", "--out", "{R}/p.json"],
                      "--kind block-forecast takes --min-psnr or --budget"),
    "forecast computes": (["calibrate", *STOCK, "--budget", "0.5", "--forecast-computes", "2", "--out", "{R}/p.json"],
                          "--forecast-computes places .* needs --kind block-forecast"),
    # calibrate --kind operating-point
    "search batch": ([*SEARCH, "--batch-size", "-3"], "argument --batch-size: must be an integer >= 1, got -3"),
    "search time batch": ([*SEARCH, "--time-batch", "-1"], "argument --time-batch"),
    "search steps": ([*SEARCH, "--search-steps", "0"], "argument --search-steps"),
    "search images": ([*SEARCH, "--images", "1"], "argument --images"),
    "search cache file": ([*SEARCH, "--cache-dir", "{R}/afile"], "--cache-dir '.*afile' is a file"),
    "search default cache file": ([*SEARCH[:-1], "{R}/afile/search.json"], "lies under .*afile'?, which is a file"),
    "search save-to file": ([*SEARCH, "--save-to", "{R}/afile"], "--save-to '.*afile' exists; give a new folder"),
    "search save-to full": ([*SEARCH, "--save-to", "{R}/full"], "--save-to '.*full' exists; give a new folder"),
    "search references": ([*SEARCH, "--reference", "ddim:20", "--reference-steps", "10"],
                          "give --reference ddim:20 or --reference-steps 10, not both"),
    "search reference form": ([*SEARCH, "--reference", "heun:20"], "argument --reference: a reference is SOLVER:STEPS"),
    "search psnr real": ([*SEARCH, "--real", "{R}/real"], "--min-psnr scores each image .* got \\['--real'\\]"),
    "search solver": ([*SEARCH, "--solver", "ddim"], "--solver ddim is for the other kinds; .* takes --solvers"),
    "search solvers": ([*SEARCH, "--solvers", "heun"], "argument --solvers"),
    "search fid needs real": (["calibrate", "--kind", "operating-point", *STOCK, "--tolerance", "0.1",
                               "--out", "{R}/new/s.json"],
                              "--model '.*stock' is a pipeline folder: its FID needs real images, --real DIR"),
    # prepare-latents / train
    "prepare config": (["prepare-latents", "--config", "{R}/none.json"], "experiment config '.*none.json' is neither"),
    "prepare images": (["prepare-latents", *PREPARE[:4], "--images", "{R}/none", *PREPARE[6:]],
                       "--images '.*none' is not an image folder"),
    "prepare cache file": (["prepare-latents", *PREPARE[:6], "--cache-dir", "{R}/afile"],
                           "--cache-dir '.*afile' is a file"),
    "prepare pipeline": (["prepare-latents", *PREPARE[:2], "--pipeline", "{R}/none", *PREPARE[4:]],
                         "--pipeline '.*none' is not a pipeline folder"),
    "prepare own model": (["prepare-latents", "--config", "{R}/own-model.json"], "has no 'pipeline' section"),
    "train unknown key": (["train", "--config", "{R}/unknown-key.json", "--output-dir", "{R}/new"],
                          r"unknown train config keys \['bogus'\]; allowed: "),
    "train output file": (["train", *PREPARE, "--output-dir", "{R}/afile"], "--output-dir '.*afile' is a file"),
    "train max steps": (["train", *PREPARE, "--output-dir", "{R}/new", "--max-steps", "0"], "argument --max-steps"),
    "train config json": (["train", "--config", "{R}/afile", "--output-dir", "{R}/new"], "afile"),
    "train resume": (["train", *PREPARE, "--output-dir", "{R}/new", "--resume", "{R}/none"],
                     "--resume '.*none' is not a checkpoint folder"),
    "train flags on own model": (["train", "--config", "{R}/own-model.json", "--images", "{R}/classes", "--output-dir",
                                  "{R}/new"], "--images set the 'pipeline' section"),
    # python -m bench
    "caches images": (["bench:", "bench-caches", "--preset", "ci", "--num-images", "3", "--out", "{R}/new"],
                      "--num-images 3 is below the ci preset's images at batch 1 \\(6\\)"),
    "caches batch1": (["bench:", "bench-caches", "--preset", "ci", "--batch1-images", "30", "--out", "{R}/new"],
                      "--num-images 24 is below --batch1-images \\(30\\)"),
    "caches threads": (["bench:", "bench-caches", "--threads", "0", "--out", "{R}/new"], "argument --threads"),
    "caches out file": (["bench:", "bench-caches", "--preset", "ci", "--out", "{R}/afile"], "--out '.*afile' is a file"),
    "shapes batches": (["bench:", "bench-shapes", "--batches", "0", "--out", "{R}/new"], "--batches must be >= 1"),
    "shapes out file": (["bench:", "bench-shapes", "--out", "{R}/afile"], "--out '.*afile' is a file"),
    "compile batch": (["bench:", "bench-compile", "--batch", "0", "--out", "{R}/new"], "--batch must be an integer >= 1"),
    "compile out file": (["bench:", "bench-compile", "--out", "{R}/afile"], "--out '.*afile' is a file"),
    "engine out file": (["bench:", "bench-engine", "--out", "{R}/afile"], "--out '.*afile' is a file"),
    "engine batch": (["bench:", "bench-engine", "--batch-size", "0"], "argument --batch-size"),
    "presets out file": (["bench:", "bench", "--out", "{R}/afile"], "--out '.*afile' is a file"),
    "publish unconfirmed": (["bench:", "publish", "--search", "{R}/unconfirmed.json", "--model", "{R}/ours"],
                            "the search '.*unconfirmed.json' confirmed no operating point \\(no candidate held "
                            "quality\\); nothing to publish"),
    "publish search not a search": (["bench:", "publish", "--search", "{R}/deep.json", "--model", "{R}/ours"],
                                    "'.*deep.json' is not an operating-point search .*: it lacks \\['goal'"),
    "publish report not a report": (["bench:", "publish", "--report", "{R}/unconfirmed.json", "--setting", "x",
                                     "--model", "{R}/ours"], "'.*unconfirmed.json' is not a bench report"),
    "publish no setting": (["bench:", "publish", "--report", "{R}/deep.json", "--model", "{R}/ours"],
                           "publish --report needs --setting"),
    "publish report": (["bench:", "publish", "--report", "{R}/none.json", "--setting", "x", "--model", "{R}/ours"],
                       "bench report '.*none.json' does not exist"),
    "publish model": (["bench:", "publish", "--search", "{R}/unconfirmed.json", "--model", "{R}/afile"],
                      "--model '.*afile' is not a pipeline folder"),
    "bench calibrate budget": (["bench:", "calibrate", "--model", "glyphs", "--budget", "0", "--out", "{R}/p.json"],
                               "argument --budget"),
}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, prefix of the error line, stderr) of one command line, run in-process."""
    from bench.cli import main as bench_main

    main, prog = (bench_main, "python -m bench") if argv[0] == "bench:" else (ee_main, "ee-diffusion")
    argv = argv[1:] if argv[0] == "bench:" else argv
    try:
        code = main(argv)
    except SystemExit as error:  # argparse refuses a bad flag itself
        code = error.code
    return code, f"{prog} {argv[0]}: error: ", capsys.readouterr().err


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_argument_ends_with_a_message_naming_it_and_touches_nothing(root, case, capsys, monkeypatch):
    monkeypatch.chdir(root)  # a default output path (policy.json, bench_out) would land in the snapshot
    argv, message = CASES[case]
    before = snapshot(root)
    code, prefix, err = run([a.replace("{R}", str(root)) for a in argv], capsys)
    assert code == 2, err
    assert "Traceback" not in err and prefix in err
    line = err[err.index(prefix):].strip()
    assert "\n" not in line and re.search(message, line), line  # one paragraph
    assert snapshot(root) == before


def test_debug_shows_the_traceback_of_a_refused_input(root, capsys):
    argv = ["calibrate", "--model", str(root / "stock"), "--budget", "0.5", "--out", str(root / "full")]
    assert ee_main(argv) == 2
    with pytest.raises(ValueError, match="--out '.*full' is a folder"):
        ee_main(["--debug", *argv])
    with pytest.raises(ValueError, match="--out '.*full' is a folder"):
        ee_main([*argv, "--debug"])


def test_an_unexpected_error_keeps_its_traceback(capsys):
    """Only input errors become messages: any other exception (a bug) propagates with its traceback."""
    import argparse

    from ee_diffusion._command_line import add_debug, run_command

    def command(args: argparse.Namespace) -> int:
        return {}["missing"] if args.bug else int("x")

    parser = argparse.ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="command", required=True).add_parser("go")
    sub.add_argument("--bug", action="store_true")
    sub.set_defaults(func=command)
    add_debug(parser, parser._subparsers._group_actions[0])
    assert run_command(parser, ["go"]) == 2
    assert capsys.readouterr().err == "tool go: error: invalid literal for int() with base 10: 'x'\n"
    with pytest.raises(KeyError, match="missing"):
        run_command(parser, ["go", "--bug"])

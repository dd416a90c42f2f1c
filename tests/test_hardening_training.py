"""Crash-safe training: atomic checkpoints, SIGKILL mid-run then resume == uninterrupted run, no unpickling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
from ee_diffusion.training.trainer import EMA_FILE, EXTRA_STATE_FILE, STATE_FILE, Trainer

TINY = ModelConfig(num_layers=2, width=16, num_heads=2)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _config(**train) -> ExperimentConfig:
    base = dict(mode="deediff", max_steps=6, batch_size=8, log_every=1, ema_decay=0.9, learning_rate=1e-3,
                checkpoint_every=2, checkpoints_total_limit=3)
    base.update(train)
    return ExperimentConfig(model=TINY, train=TrainConfig(**base))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a finished run: raw weights of the last checkpoint, EMA, and the saved pipeline."""
    last = sorted((folder / "checkpoints").glob("step_*"))[-1]
    out = {f"ckpt/{k}": v for k, v in load_file(last / "model.safetensors").items()}
    out.update({f"ema/{k}": v for k, v in load_file(last / EMA_FILE).items()})
    for part in ("transformer", "exit_heads"):
        weights = load_file(folder / "pipeline" / part / "diffusion_pytorch_model.safetensors")
        out.update({f"{part}/{k}": v for k, v in weights.items()})
    return out


def _cli(config_path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ee_diffusion.training.cli", "--config", str(config_path), "--output-dir", str(out),
            "--cpu", "--no-progress", *extra]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path, one_thread):
    from ee_diffusion.training.trainer import train

    config = _config(max_steps=100, checkpoint_every=10, log_every=5)
    config_path = tmp_path / "experiment.json"
    config.save(config_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    crashed = tmp_path / "crashed"
    # A real training process, killed with SIGKILL once it has written some checkpoints. While it starts up,
    # this process trains the uninterrupted reference.
    proc = subprocess.Popen(_cli(config_path, crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        reference = tmp_path / "reference"
        train(config, reference, cpu=True, progress=False)
        AcceleratorState._reset_state(reset_partial_state=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            done = list((crashed / "checkpoints").glob("step_*")) if (crashed / "checkpoints").is_dir() else []
            if any(int(p.name.split("_")[1]) >= 30 for p in done):
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (crashed / "pipeline").exists()
    # Only complete checkpoints carry a checkpoint name; a half-written one (if any) sits in a .tmp- folder.
    names = sorted(p.name for p in (crashed / "checkpoints").iterdir())
    complete = [n for n in names if n.startswith("step_")]
    assert complete and all((crashed / "checkpoints" / n / STATE_FILE).is_file() for n in complete), names
    assert all(n.startswith(("step_", ".tmp-")) for n in names), names
    assert int(complete[-1].split("_")[1]) < 100

    resumed = train(config, crashed, resume="latest", cpu=True, progress=False)
    assert resumed.step == 100
    a, b = _weights(reference), _weights(crashed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    steps = [json.loads(line)["step"] for line in (crashed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 101, 5))


class Killed(Exception):
    pass


def test_a_crash_inside_save_state_leaves_no_checkpoint_and_resume_takes_the_last_complete(tmp_path, monkeypatch):
    trainer = Trainer(_config(max_steps=4), tmp_path, progress=False)
    trainer.train()  # checkpoints at 2 and 4
    assert [p.name for p in trainer.complete_checkpoints()] == ["step_0000002", "step_0000004"]
    real_save = trainer.accelerator.save_state

    def dies_half_way(folder, *args, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"\x00" * 10)  # a half-written file
        raise Killed("killed while saving")

    monkeypatch.setattr(trainer.accelerator, "save_state", dies_half_way)
    with pytest.raises(Killed):
        trainer.train(max_steps=6)  # the step-6 save dies before anything gets a checkpoint name
    assert [p.name for p in trainer.complete_checkpoints()] == ["step_0000002", "step_0000004"]
    assert (tmp_path / "checkpoints" / ".tmp-step_0000006").is_dir()
    # A log line cut short by the kill is dropped on resume.
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"step": 7, "lo')

    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = Trainer(_config(max_steps=6), tmp_path, progress=False)
    assert resumed.load_checkpoint() == 4
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    monkeypatch.setattr(resumed.accelerator, "save_state", real_save.__func__.__get__(resumed.accelerator))
    resumed.train()
    resumed.save_checkpoint()  # and the stale .tmp- folder is cleaned up by the next save
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_0000002", "step_0000004", "step_0000006"]


def test_checkpoints_hold_no_custom_pickles_and_corruption_names_the_file(tmp_path):
    trainer = Trainer(_config(max_steps=2), tmp_path, progress=False)
    trainer.train()
    folder = trainer.complete_checkpoints()[-1]
    files = sorted(p.name for p in folder.iterdir())
    assert not [f for f in files if f.startswith("custom_checkpoint")], files
    assert {"model.safetensors", EMA_FILE, EXTRA_STATE_FILE, STATE_FILE} <= set(files)

    AcceleratorState._reset_state(reset_partial_state=True)
    fresh = Trainer(_config(max_steps=2), tmp_path, progress=False)
    ema = folder / EMA_FILE
    good = ema.read_bytes()
    ema.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=r"ema.safetensors.*not a readable safetensors file"):
        fresh.load_checkpoint(folder)
    ema.write_bytes(good)
    model = folder / "model.safetensors"
    model.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=r"cannot restore checkpoint .*step_0000002"):
        fresh.load_checkpoint(folder)
    (folder / STATE_FILE).unlink()
    with pytest.raises(ValueError, match=r"not a complete checkpoint.*trainer_state.json"):
        fresh.load_checkpoint(folder)
    with pytest.raises(ValueError, match=r"no complete checkpoint to resume from"):
        fresh.load_checkpoint()

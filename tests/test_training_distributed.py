"""Two real processes (gloo on the CPU) train a tiny model with `accelerate launch` - our pixel DiT, and a stock
DiT pipeline in latent space (the main process builds the latent cache, both stream it); both end with equal
weights."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent(
    """
    import sys
    from safetensors.torch import save_file
    from ee_diffusion.training.config import ExperimentConfig, ModelConfig, TrainConfig
    from ee_diffusion.training.trainer import Trainer

    out = sys.argv[1]
    config = ExperimentConfig(
        model=ModelConfig(num_layers=2, width=16, num_heads=2),
        train=TrainConfig(mode="deediff", max_steps=3, batch_size=8, log_every=1, ema_decay=0.9),
    )
    if len(sys.argv) > 2:  # a latent run: the config file of a stock pipeline folder
        config = ExperimentConfig.load(sys.argv[2])
    trainer = Trainer(config, out, cpu=True, progress=False)
    rank = trainer.accelerator.process_index
    if rank == 0:
        init = {k: v.contiguous().clone() for k, v in trainer.objective_module.state_dict().items()}
        save_file(init, f"{out}/init.safetensors")
    trainer.train()
    state = {k: v.contiguous() for k, v in trainer.objective_module.state_dict().items()}
    save_file(state, f"{out}/rank{rank}.safetensors")
    acc = trainer.accelerator
    # One file per rank: lines printed by two processes to one pipe may interleave.
    with open(f"{out}/rank{rank}.txt", "w") as f:
        f.write(f"world {acc.num_processes} rank {rank} batch {trainer.micro_batch(0)[0].shape[0]} {acc.state.backend}")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latent_config(tmp_path) -> list[str]:
    """A tiny DiT pipeline folder, 16 images in 2 class folders and the config of a latent DeeDiff run on them."""
    import numpy as np
    from PIL import Image

    from ee_diffusion.testing import tiny_pipeline
    from ee_diffusion.training.config import ExperimentConfig, PipelineTrainingConfig, TrainConfig

    tiny_pipeline("dit", num_layers=2).save_pretrained(tmp_path / "dit")
    rng = np.random.default_rng(0)
    for i in range(16):
        folder = tmp_path / "images" / str(i % 2)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(folder / f"{i}.png")
    config = ExperimentConfig(
        pipeline=PipelineTrainingConfig(folder=str(tmp_path / "dit"), images=str(tmp_path / "images"),
                                        cache_dir=str(tmp_path / "cache"), shard_size=6, num_previews=0),
        train=TrainConfig(mode="deediff", max_steps=3, batch_size=8, log_every=1, ema_decay=0.9),
    )
    config.save(tmp_path / "latent.json")
    return [str(tmp_path / "latent.json")]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pixels", "latents"])
def test_two_process_training_keeps_ranks_identical(tmp_path, source):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    extra = _latent_config(tmp_path) if source == "latents" else []
    # `--multi_gpu` selects accelerate's torchrun launcher; with no CUDA device the processes run on the CPU
    # with gloo (`accelerate launch --cpu` would start a single process).
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(tmp_path), *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == f"world 2 rank {rank} batch 4 gloo"
    rank0 = load_file(tmp_path / "rank0.safetensors")
    rank1 = load_file(tmp_path / "rank1.safetensors")
    init = load_file(tmp_path / "init.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert any(not torch.equal(rank0[k], init[k]) for k in init)
    assert (tmp_path / "log.jsonl").read_text().count("\n") == 3  # only the main process logs
    if source == "latents":  # built once, by the main process, while the other waited
        assert json.loads((tmp_path / "cache" / "cache.json").read_text())["complete"] is True

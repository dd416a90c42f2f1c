"""Two real processes (gloo on the CPU) train a tiny model with `accelerate launch`; both end with equal weights."""

import socket
import subprocess
import sys
import textwrap

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


def test_two_process_training_keeps_ranks_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # `--multi_gpu` selects accelerate's torchrun launcher; with no CUDA device the processes run on the CPU
    # with gloo (`accelerate launch --cpu` would start a single process).
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(tmp_path),
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

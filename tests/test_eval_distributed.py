"""Sampling for FID split across two real processes (accelerate, gloo on the CPU) equals one process."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from ee_diffusion.eval.sampling import generate
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.testing import tiny_dit

WORKER = textwrap.dedent(
    """
    import json
    import sys
    import torch
    from accelerate import Accelerator
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file
    from ee_diffusion.eval.sampling import generate_distributed
    from ee_diffusion.pipelines import EarlyExitDiTPipeline
    from ee_diffusion.testing import tiny_dit

    accelerator = Accelerator(cpu=True)
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    run = generate_distributed(pipe, 7, accelerator, num_inference_steps=3, seed=5)
    rank = accelerator.process_index
    save_file({"images": run.images, "indices": run.indices}, f"{sys.argv[1]}/rank{rank}.safetensors")
    stats = run.extra["exit_stats"]
    info = {"world": accelerator.num_processes, "evals": run.block_evals, "backend": accelerator.state.backend,
            "stats_blocks": stats.total_blocks, "stats_calls": stats.num_calls}
    open(f"{sys.argv[1]}/rank{rank}.json", "w").write(json.dumps(info))
    # Tear the gloo group down before the interpreter exits: left to exit-time destructors, a rank can abort
    # ("terminate called without an active exception") after its work is done.
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_generate_the_images_of_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        str(script), str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    single = generate(pipe, range(7), num_inference_steps=3, seed=5)
    for rank in (0, 1):
        gathered = load_file(tmp_path / f"rank{rank}.safetensors")
        assert gathered["indices"].tolist() == list(range(7))
        # Equal up to float32 rounding: the batch shapes differ (7 rows vs 4 + 3), so BLAS sums in another order.
        torch.testing.assert_close(gathered["images"], single.images, rtol=0, atol=2e-4)
        info = json.loads((tmp_path / f"rank{rank}.json").read_text())
        stats = single.extra["exit_stats"]
        assert info == {"world": 2, "evals": single.block_evals, "backend": "gloo",
                        # each rank ran its own 3 steps: the merged statistics hold both ranks' calls
                        "stats_blocks": stats.total_blocks, "stats_calls": 2 * stats.num_calls}

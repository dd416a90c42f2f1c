"""FLOPs of a sampling run (`bench.compute`): blocks and heads counted, fewer with exits."""

import pytest

from bench.compute import count_flops
from ee_diffusion import EarlyExitConfig
from ee_diffusion.eval.sampling import generate
from ee_diffusion.schedules import StaticDepth, UncertaintyThreshold
from tests._eval_pipes import tiny_dit_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_flops_count_blocks_heads_and_shrink_with_exits():
    pipe = tiny_dit_pipeline(heads=True)
    call = lambda config: count_flops(lambda: generate(pipe, range(2), num_inference_steps=2, exit_config=config))
    full = call(None)
    half = call(EarlyExitConfig(policy=StaticDepth(2)))
    heads = call(EarlyExitConfig(policy=UncertaintyThreshold(0.999, patience=1)))
    assert full["heads"] == 0 and heads["heads"] > 0
    assert half["total"] < full["total"] < heads["total"]

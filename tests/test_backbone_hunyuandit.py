"""Hunyuan-DiT (`HunyuanDiT2DModel`): one stack of blocks that cross-attend to the joined BERT and T5 text; the
model's own loop keeps the outputs of the first blocks and hands each to its mirror block past the middle as `skip`
(6 blocks: block 4 takes block 1's, block 5 block 0's), so the family runs `whole_batch`: every block hands every row
back to the loop. The engine's property suite, and what the skips need."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, count_pre_hooks, run, single_row_reference

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import get_exit_stats
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import hunyuandit_inputs, tiny_hunyuandit

NUM_BLOCKS = 6


def make_case(height: int = 8, width: int = 8) -> Case:
    model = tiny_hunyuandit(num_layers=NUM_BLOCKS)
    inputs = hunyuandit_inputs(model, batch=4, height=height, width=width)
    inputs["timestep"] = T.float()  # HunyuanDiTPipeline passes the DDPM scheduler's 0-999 timesteps as they are
    return Case(model=model, inputs=inputs, num_blocks=NUM_BLOCKS)


@pytest.fixture
def case():
    return make_case()


def test_the_family_is_found_and_runs_whole_batch():
    adapter = get_adapter(tiny_hunyuandit(num_layers=4))
    assert adapter.family.name == "HunyuanDiT" and adapter.family.whole_batch
    assert adapter.num_blocks == 4 and adapter.stack(0).attr == "blocks"
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn1", "attn2", "ff"]


@pytest.mark.parametrize("depths", [[1, 6, 6, 2], [5, 6, 2, 6], [6, 1, 4, 5], [2, 3, 4, 5]])
def test_rows_that_leave_around_the_middle_each_get_their_own_skips(depths):
    """Rows leave before the skips are kept, between keeping and taking them, and while the second half takes them:
    every running row takes its own kept output, and each row's output is the decode of its exit block."""
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths(depths)))
    out = run(case)
    assert get_exit_stats(case.model).blocks_run[0].tolist() == depths
    torch.testing.assert_close(out, single_row_reference(case, depths), rtol=0, atol=1e-5)
    for row, k in enumerate(depths):
        torch.testing.assert_close(out[row : row + 1], case.hand_exit(case.select(case.inputs, [row]), k), rtol=0,
                                   atol=1e-5)


def test_the_models_skips_hold_every_row_while_the_blocks_compute_the_running_ones():
    """What the model's loop hands the skip blocks (a pre-hook outside the engine's hook sees the model's own call)
    holds all 4 rows; the blocks' attention computes only the rows still running."""
    case = make_case()
    seen = []
    handles = [block.register_forward_pre_hook(
        lambda module, args, kwargs, i=i: seen.append((i, args[0].shape[0], kwargs["skip"].shape[0])),
        with_kwargs=True) for i, block in enumerate(case.model.blocks) if i > NUM_BLOCKS // 2]
    apply(case, EarlyExitConfig(policy=RowDepths([2, 6, 3, 6])))
    try:
        with count_pre_hooks([(i, block.attn1) for i, block in enumerate(case.model.blocks)]) as computed:
            run(case)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [(4, 4, 4), (5, 4, 4)]
    assert computed == [(0, 4), (1, 4), (2, 3), (3, 2), (4, 2), (5, 2)]


def test_a_wide_latent_exits_to_the_decode_of_its_block():
    """The head unpatchifies to the sample's own (height, width): a non-square latent decodes exactly."""
    case = make_case(height=8, width=12)
    assert torch.equal(case.hand_exit(case.inputs, NUM_BLOCKS), run(case))
    apply(case, EarlyExitConfig(policy=StaticDepth(4)))
    assert torch.equal(run(case), case.hand_exit(case.inputs, 4))


def test_controlnet_residuals_are_refused_while_a_policy_is_set():
    case = make_case()
    apply(case, EarlyExitConfig(policy=StaticDepth(2)))
    residuals = [torch.zeros(4, 16, 16)] * 2
    with pytest.raises(ValueError, match="does not support `controlnet_block_samples`"):
        run(case, {**case.inputs, "controlnet_block_samples": residuals})

"""Chroma (`ChromaTransformer2DModel`): Flux-like double-stream blocks, then single-stream blocks on the joint
sequence [text; image] (a joint stack); a 0-1 timestep; per-block slices of a per-row modulation table. The property
suite runs across both stacks."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, count_pre_hooks, run, single_row_reference

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import get_exit_stats
from ee_diffusion.testing import chroma_inputs, tiny_chroma

SHARED = ("txt_ids", "img_ids")  # position ids: one table for every row
NUM_DOUBLE, NUM_SINGLE = 2, 3


def make_case() -> Case:
    model = tiny_chroma(num_layers=NUM_DOUBLE, num_single_layers=NUM_SINGLE)
    inputs = chroma_inputs(model, batch=4)
    inputs["timestep"] = T.float() / 1000  # ChromaPipeline calls the model with t / 1000
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_DOUBLE + NUM_SINGLE,
        shared=SHARED,
    )


@pytest.fixture
def case():
    return make_case()


def test_the_family_declares_both_stacks_the_second_joint():
    adapter = get_adapter(tiny_chroma(num_layers=2, num_single_layers=3))
    assert adapter.family.name == "Chroma"
    assert adapter.num_blocks == 5
    assert [adapter.stack(i).joint for i in range(5)] == [False, False, True, True, True]
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn", "ff", "ff_context"]
    assert [name for name, _ in adapter.forecast_modules(2)] == ["attn", "proj_mlp", "proj_out"]


def test_rows_that_leave_in_the_double_stream_blocks_skip_the_rest():
    """Rows 0 and 2 leave after double block 0; rows 1 and 3 run on through the single-stream blocks."""
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths([1, 5, 1, 4])))
    with count_pre_hooks([(i, b.attn) for i, b in enumerate(case.model.transformer_blocks)]) as seen:
        out = run(case)
    assert seen == [(0, 4), (1, 2)]
    torch.testing.assert_close(get_exit_stats(case.model).timesteps[0], T.float())  # the 0-1 argument, scaled
    torch.testing.assert_close(out, single_row_reference(case, [1, 5, 1, 4]), rtol=0, atol=1e-5)


def test_a_row_keeps_its_own_modulation_and_mask():
    """The per-block modulation slice (B, 3, D) and the joint mask (B, L_text + L) follow the running rows: changing
    the prompt of row 0 (full depth) changes row 0 alone while the others leave at their own depths."""
    case = make_case()
    other = dict(case.inputs, encoder_hidden_states=case.inputs["encoder_hidden_states"].clone())
    other["encoder_hidden_states"][0] += 1.0
    apply(case, EarlyExitConfig(policy=RowDepths([5, 4, 3, 1])))
    a, b = run(case), run(case, other)
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[1:], b[1:])


def test_controlnet_residuals_are_refused_while_exits_are_on():
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths([5, 5, 5, 5])))
    with pytest.raises(ValueError, match="controlnet_single_block_samples"):
        run(case, dict(case.inputs, controlnet_single_block_samples=[torch.zeros(4, 16, 16)]))
    with pytest.raises(ValueError, match="controlnet_block_samples"):
        run(case, dict(case.inputs, controlnet_block_samples=[torch.zeros(4, 16, 16)]))


def test_a_per_block_row_argument_is_gathered_for_every_block():
    """Rows 2 and 3 leave after block 0; rows 0 and 1 run blocks 1-4, each with its own slice of the modulation table
    (the engine re-gathers a row argument whenever a block passes a different tensor under its name)."""
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths([5, 5, 1, 1])))
    torch.testing.assert_close(run(case), single_row_reference(case, [5, 5, 1, 1]), rtol=0, atol=1e-5)

"""Qwen-Image (`QwenImageTransformer2DModel`): packed tokens, a 0-1 timestep, a per-row text mask; each block returns
(encoder_hidden_states, hidden_states); the engine's property suite."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, run

from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import get_exit_stats
from ee_diffusion.testing import qwenimage_inputs, tiny_qwenimage

NUM_BLOCKS = 4


def make_case() -> Case:
    model = tiny_qwenimage(num_layers=NUM_BLOCKS)
    inputs = qwenimage_inputs(model, batch=4)
    inputs["timestep"] = T.float() / 1000  # QwenImagePipeline calls the model with t / 1000
    return Case(
        model=model,
        inputs=inputs,
        num_blocks=NUM_BLOCKS,
    )


@pytest.fixture
def case():
    return make_case()


def test_timesteps_are_read_in_the_0_999_scale():
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths([4, 3, 2, 1])))
    run(case)
    torch.testing.assert_close(get_exit_stats(case.model).timesteps[0], T.float())


def test_each_rows_text_mask_follows_it():
    """Row 1's padded text positions stay masked after rows before it leave (the mask is sliced with its rows)."""
    case = make_case()
    alone = run(case, case.select(case.inputs, [1]))  # the stock model on row 1 alone
    apply(case, EarlyExitConfig(policy=RowDepths([1, 4, 2, 4])))
    torch.testing.assert_close(run(case)[1:2], alone, rtol=0, atol=1e-5)

"""Lumina-Image 2.0 (`Lumina2Transformer2DModel`): refiners first (always run), then the main stack on the padded
joint sequence [caption; image] with per-row caption lengths (a per-row mask and rotary table); the model is called
with 1 - t/1000, which the family reads backwards (`timestep_reversed`). The property suite runs on the main stack."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, run, single_row_reference

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import get_exit_stats
from ee_diffusion.testing import lumina2_inputs, tiny_lumina2


def make_case() -> Case:
    model = tiny_lumina2(num_layers=4)
    inputs = lumina2_inputs(model, batch=4)
    inputs["timestep"] = 1 - T.float() / 1000  # Lumina2Pipeline calls the model with 1 - t / 1000
    return Case(model=model, inputs=inputs, num_blocks=4)


@pytest.fixture
def case():
    return make_case()


def test_the_model_timestep_is_read_backwards():
    """Schedules are written in 0-999 timesteps: the model's growing 1 - t/1000 maps back to t."""
    case = make_case()
    assert get_adapter(case.model).stack(0).attr == "layers"
    apply(case, EarlyExitConfig(policy=RowDepths([4, 4, 4, 4])))
    run(case)
    torch.testing.assert_close(get_exit_stats(case.model).timesteps[0], T.float(), rtol=0, atol=1e-3)


def test_rows_with_their_own_caption_lengths_exit_alone():
    """Odd rows have 2 caption tokens fewer: their mask, rotary table and image offset follow them when the batch is
    compacted, and each row gets what it gets alone."""
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths([4, 1, 2, 3])))
    torch.testing.assert_close(run(case), single_row_reference(case, [4, 1, 2, 3]), rtol=0, atol=1e-5)

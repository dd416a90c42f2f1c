"""AuraFlow (`AuraFlowTransformer2DModel`): joint MMDiT blocks, then single-stream blocks on the joint sequence
[register + text tokens; image tokens] that the model concatenates between the stacks (a `joint` stack); a 0-1
timestep. The property suite runs across both stacks; rows that leave in the joint stack are parked behind a text part
the model slices off unread."""

from __future__ import annotations

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, decoded_exit, run

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, get_exit_stats
from ee_diffusion.schedules import CachedTailResidual
from ee_diffusion.testing import auraflow_inputs, tiny_auraflow


def make_case() -> Case:
    model = tiny_auraflow(num_layers=2, num_single_layers=2)
    inputs = auraflow_inputs(model, batch=4)
    inputs["timestep"] = T.float() / 1000  # AuraFlowPipeline calls the model with t / 1000
    return Case(model=model, inputs=inputs, num_blocks=4)


@pytest.fixture
def case():
    return make_case()


def test_the_family_spans_both_stacks_and_the_second_is_joint():
    adapter = get_adapter(tiny_auraflow(num_layers=2, num_single_layers=3))
    assert adapter.family.name == "AuraFlow" and adapter.num_blocks == 5
    assert [adapter.stack(i).joint for i in range(5)] == [False, False, True, True, True]
    assert [name for name, _ in adapter.forecast_modules(0)] == ["attn", "ff", "ff_context"]


@pytest.mark.parametrize("depths", [[1, 1, 1, 1], [1, 2, 1, 2], [2, 1, 4, 3], [1, 4, 4, 4]])
def test_rows_that_leave_in_the_joint_stack_are_parked_across_the_concatenation(depths):
    """All rows leaving in the joint stack (the model still concatenates and slices: the text stream must cover the
    whole batch), and some leaving there while others run the single-stream blocks."""
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths(depths)))
    out = run(case)
    assert get_exit_stats(case.model).blocks_run[0].tolist() == depths
    for row, k in enumerate(depths):
        torch.testing.assert_close(out[row], decoded_exit(case.model, case.inputs, k)[row], rtol=0, atol=1e-5)


def test_the_tail_cache_decides_on_the_joint_sequence_or_is_refused():
    case = make_case()
    with pytest.raises(ValueError, match="exit_block must be at least 3, got 1"):
        apply_early_exit(case.model, EarlyExitConfig(policy=CachedTailResidual()))

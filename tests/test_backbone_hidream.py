"""HiDream-I1 (`HiDreamImageTransformer2DModel`): double-stream blocks, then single-stream blocks on [image; text];
the model's loop appends each block's own Llama tokens before it and cuts them off after it (`whole_batch`); the
blocks are wrappers whose sub-modules are forecast by dotted names; the image feed-forwards are mixtures of experts.
The model names its timestep argument `timesteps` and takes its Llama layers with the batch second (layers, B, L, D).
The property suite runs across both stacks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from _backbone_properties import *  # noqa: F401,F403 - the shared property tests, collected here
from _backbone_properties import T, Case, RowDepths, apply, decoded_exit, run, single_row_reference

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, get_exit_stats
from ee_diffusion.schedules import CachedTailResidual
from ee_diffusion.testing import hidream_inputs, tiny_hidream

LLAMA = "encoder_hidden_states_llama3"  # (layers, B, L, D): the batch on the second dimension
NUM_DOUBLE, NUM_SINGLE = 2, 2


def hand_exit(model, inputs, k):
    """The decoder's decode of block k; the suite's `decoded_exit` reads the timesteps as `timestep`."""
    inputs = dict(inputs)
    inputs["timestep"] = inputs.pop("timesteps")
    return decoded_exit(model, inputs, k)


@dataclass
class HiDreamCase(Case):
    """Rows of the Llama layers are on their second dimension; the guidance batch repeats `timesteps`."""

    def select(self, inputs, rows):
        rows = torch.as_tensor(rows)
        return {k: v.index_select(1 if k == LLAMA else 0, rows) for k, v in inputs.items()}

    def cfg_inputs(self):
        two = self.select(self.inputs, [0, 1])
        out = {}
        for k, v in two.items():
            dim = 1 if k == LLAMA else 0
            # [x0, x1, x0, x1] at equal timesteps; the negative prompt's half of the text differs
            out[k] = torch.cat([v, v] if k in (self.latent, "timesteps") else [v, v.flip(dim) * 0.5], dim=dim)
        return out


def make_case(side: tuple[int, int] = (8, 8)) -> HiDreamCase:
    model = tiny_hidream(num_layers=NUM_DOUBLE, num_single_layers=NUM_SINGLE)
    inputs = hidream_inputs(model, batch=4)
    inputs["timesteps"] = T.float()  # HiDreamImagePipeline calls the model with 0-999 timesteps
    inputs["hidden_states"] = inputs["hidden_states"][..., : side[0], : side[1]].contiguous()
    return HiDreamCase(model=model, inputs=inputs, num_blocks=NUM_DOUBLE + NUM_SINGLE,
                       hand_exit=lambda inputs, k: hand_exit(model, inputs, k))


@pytest.fixture
def case():
    return make_case()


def test_the_family_spans_both_stacks_with_dotted_sub_modules():
    adapter = get_adapter(tiny_hidream(num_layers=2, num_single_layers=3))
    assert adapter.family.name == "HiDream" and adapter.num_blocks == 5 and adapter.family.whole_batch
    assert [adapter.stack(i).joint for i in range(5)] == [False, False, True, True, True]
    assert [name for name, _ in adapter.forecast_modules(0)] == ["block.attn1", "block.ff_i", "block.ff_t"]
    assert [name for name, _ in adapter.forecast_modules(2)] == ["block.attn1", "block.ff_i"]
    assert adapter.forecast_modules(2)[1][1] is adapter.blocks[2].block.ff_i
    assert adapter.timestep_arg == "timesteps"


@pytest.mark.parametrize("depths", [[1, 1, 1, 1], [1, 2, 1, 2], [2, 1, 4, 3], [1, 4, 4, 4], [3, 4, 3, 4]])
def test_rows_that_leave_in_either_stack_are_carried_through_the_models_concatenations(depths):
    """The model appends each block's Llama tokens to the whole batch and cuts them off after the block: a row that
    left carries its exit value through both, and decodes as its own exit block."""
    case = make_case()
    apply(case, EarlyExitConfig(policy=RowDepths(depths)))
    out = run(case)
    assert get_exit_stats(case.model).blocks_run[0].tolist() == depths
    for row, k in enumerate(depths):
        torch.testing.assert_close(out[row], case.hand_exit(case.inputs, k)[row], rtol=0, atol=1e-5)


def test_non_square_latents_keep_each_rows_key_mask():
    """Non-square latents are padded to the model's `max_seq` tokens with a per-row key mask (B, L), which the
    single-stream blocks extend over the text: both follow the running rows."""
    case = make_case(side=(8, 4))
    depths = [4, 1, 3, 2]
    apply(case, EarlyExitConfig(policy=RowDepths(depths)))
    out = run(case)
    assert out.shape == (4, 4, 8, 4)
    torch.testing.assert_close(out, single_row_reference(case, depths), rtol=0, atol=1e-5)
    for row, k in enumerate(depths):
        torch.testing.assert_close(out[row], case.hand_exit(case.inputs, k)[row], rtol=0, atol=1e-5)


def test_the_mixture_of_experts_routes_each_token_on_its_own():
    """The experts' gate picks each token's experts from that token alone: another prompt in row 0 changes row 0 and
    leaves the other rows' outputs as they were (up to float32 rounding of other matmul shapes), while the tokens
    really are spread over several experts."""
    case = make_case()
    gate = case.model.double_stream_blocks[0].block.ff_i.gate
    chosen = []
    handle = gate.register_forward_hook(lambda module, args, out: chosen.append(out[0]))
    other = dict(case.inputs, encoder_hidden_states_t5=case.inputs["encoder_hidden_states_t5"].clone())
    other["encoder_hidden_states_t5"][0] += 1.0
    apply(case, EarlyExitConfig(policy=RowDepths([4, 3, 2, 1])))
    try:
        a, b = run(case), run(case, other)
    finally:
        handle.remove()
    assert chosen[0].unique().numel() > 2  # top-2 of 4 experts per token, not the same for every token
    assert not torch.allclose(a[0], b[0], atol=1e-3)
    torch.testing.assert_close(a[1:], b[1:], rtol=0, atol=1e-6)


def test_the_tail_cache_decides_in_the_single_stream_stack_or_is_refused():
    """The tail residual h_N - h_k needs h_k on the single-stream sequence, as h_N is."""
    case = make_case()
    with pytest.raises(ValueError, match="exit_block must be at least 3, got 2"):
        apply_early_exit(case.model, EarlyExitConfig(policy=CachedTailResidual(exit_block=2)))
    apply(case, EarlyExitConfig(policy=CachedTailResidual(threshold=1e9, forecast_order=1, exit_block=3)))
    first, second = run(case), run(case, dict(case.inputs, timesteps=case.inputs["timesteps"] - 5))
    assert get_exit_stats(case.model).blocks_run[0].tolist() == [3] * 4
    assert torch.isfinite(second).all() and not torch.equal(first, second)


def test_a_masked_plan_parks_image_first_across_the_joint_concatenation(monkeypatch):
    """Under torch.compile a per-row plan runs masked (no compaction): a row that leaves in the double stream is
    parked with its text part AFTER its image tokens, as HiDream's [image; text] sequence has it (`text_first=False`);
    in front, the model's final cut would keep text tokens. Here the masked path runs eagerly and must equal the
    compacting one, row 0 leaving after block 1 (double stream), row 3 after block 4 (single stream)."""
    from ee_diffusion.schedules import TimestepSchedule

    policy = TimestepSchedule([100, 800], [1, 3, 4])  # timesteps 10 / 300, 600 / 900 -> depths 1, 3, 3, 4
    case = make_case()
    apply(case, EarlyExitConfig(policy=policy))
    compacted = run(case)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    masked = run(case)
    torch.testing.assert_close(masked, compacted, rtol=0, atol=1e-5)

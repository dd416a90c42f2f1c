"""The engine's property suite, written once for any backbone and imported by the test_backbone_*.py files.

Each test file defines a `case` fixture (a `Case`: a tiny real model, a batch of 4 rows at timesteps
10/300/600/900 (Flux: 0-1 timesteps that the family scales to these), a hand-written reference for "exited at depth k" and a counter of real block computations)
and imports the tests below with `from _backbone_properties import *`, so pytest collects them per backbone.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from ee_diffusion.adapters import get_adapter
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import (
    apply_early_exit,
    early_exit,
    get_exit_stats,
    is_early_exit_applied,
    remove_early_exit,
    set_exit_config,
)
from ee_diffusion.heads import UncertaintyHeads
from ee_diffusion.schedules import ExitContext, StaticDepth, TimestepSchedule, UncertaintyThreshold

T = torch.tensor([10, 300, 600, 900])


@dataclass
class Case:
    model: nn.Module
    inputs: dict[str, Any]  # model keyword arguments for a batch of 4; every tensor's first dim is the batch
    num_blocks: int
    # (inputs, depth k) -> the prediction exited at depth k; default: the family decoder's (`decoded_exit`)
    hand_exit: Callable[[dict[str, Any], int], torch.Tensor] | None = None
    # context manager yielding [(block, rows)] of real block computations; default: every declared block's first
    # forecastable sub-module (its attention), which runs exactly when the block is computed
    count: Callable[[nn.Module], Any] | None = None
    apply_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. bridges for U-Nets
    latent: str = "hidden_states"
    cfg_pairs: bool = True  # whether the model recognises classifier-free-guidance batches
    shared: tuple[str, ...] = ()  # tensor inputs shared by every row (Flux's position ids), not batch-first

    def __post_init__(self) -> None:
        if self.count is None:
            self.count = count_block_computations
        if self.hand_exit is None:
            self.hand_exit = functools.partial(decoded_exit, self.model)

    def per_row(self, name: str, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.ndim > 0 and name not in self.shared

    def select(self, inputs: dict[str, Any], rows) -> dict[str, Any]:
        rows = torch.as_tensor(rows)
        return {k: v.index_select(0, rows) if self.per_row(k, v) else v for k, v in inputs.items()}

    def cfg_inputs(self) -> dict[str, Any]:
        """A guidance batch of 2 pairs: [x0, x1, x0, x1] at equal timesteps, other conditioning per row."""
        two = self.select(self.inputs, [0, 1])
        out = {}
        for k, v in two.items():
            if self.per_row(k, v) and k in (self.latent, "timestep"):
                out[k] = torch.cat([v, v])
            elif self.per_row(k, v):
                # the "negative prompt" half differs (masks and ids keep their dtype)
                out[k] = torch.cat([v, v.flip(0) * 0.5 if v.is_floating_point() else v.flip(0)])
            else:
                out[k] = v
        return out


def decoded_exit(model: nn.Module, inputs: dict[str, Any], k: int) -> torch.Tensor:
    """Block k's image stream, from the family decoder's own pass, through the model's head: what an exit at depth k
    must return."""
    decoder = get_adapter(model).decoder
    conditioning = dict(inputs)
    sample, timestep = conditioning.pop("hidden_states"), conditioning.pop("timestep")
    with torch.no_grad():
        hidden = decoder.hidden_states_per_block(sample, timestep, **conditioning)
        if decoder.decode_reads_sample:
            conditioning["sample"] = sample
        return decoder.decode(hidden[k - 1], timestep=timestep, **conditioning)


def run(case: Case, inputs: dict[str, Any] | None = None) -> torch.Tensor:
    with torch.no_grad():
        return case.model(**(case.inputs if inputs is None else inputs)).sample


def apply(case: Case, config: EarlyExitConfig, heads=None) -> None:
    apply_early_exit(case.model, config, heads=heads, **case.apply_kwargs)


def single_row_reference(case: Case, depths, inputs=None) -> torch.Tensor:
    inputs = case.inputs if inputs is None else inputs
    rows = []
    for r, d in enumerate(depths):
        with early_exit(case.model, EarlyExitConfig(policy=StaticDepth(int(d))), **case.apply_kwargs):
            rows.append(run(case, case.select(inputs, [r])))
    return torch.cat(rows)


def expected_counts(depths, num_blocks):
    """(block, rows still active) for every decision-point block that must be computed, given per-row depths."""
    return [(i, sum(d > i for d in depths)) for i in range(num_blocks) if any(d > i for d in depths)]


class RowDepths:
    """A custom dynamic policy: row r exits after block depth[r] - 1."""

    needs_certainty = False

    def __init__(self, depths):
        self.depths = torch.as_tensor(depths)
        self.contexts: list[tuple[int, list[int]]] = []

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        self.contexts.append((ctx.block_index, ctx.rows.tolist()))
        return self.depths[ctx.rows] <= ctx.block_index + 1


class WantsFrom:
    """Row r wants to exit after every block index >= first[r]."""

    needs_certainty = False

    def __init__(self, first):
        self.first = torch.as_tensor(first)

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        return self.first[ctx.rows] <= ctx.block_index


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ exits off
def test_exits_off_is_the_stock_model(case):
    stock = run(case)
    apply(case, EarlyExitConfig())
    with case.count(case.model) as seen:
        out = run(case)
    assert torch.equal(out, stock)
    assert seen == expected_counts([case.num_blocks] * 4, case.num_blocks)
    stats = get_exit_stats(case.model)
    assert stats.blocks_run[0].tolist() == [case.num_blocks] * 4
    assert stats.depth_fraction == 1.0


def test_full_depth_static_policy_is_the_stock_model(case):
    stock = run(case)
    apply(case, EarlyExitConfig(policy=StaticDepth(case.num_blocks)))
    assert torch.equal(run(case), stock)


def test_hand_reference_at_full_depth_is_the_model_output(case):
    assert torch.equal(case.hand_exit(case.inputs, case.num_blocks), run(case))


# ------------------------------------------------------------------------------------------------ static exits
def test_static_depth_is_the_decode_of_its_exit(case):
    for k in range(1, case.num_blocks):
        expected = case.hand_exit(case.inputs, k)
        with early_exit(case.model, EarlyExitConfig(policy=StaticDepth(k)), **case.apply_kwargs) as stats:
            with case.count(case.model) as seen:
                out = run(case)
        assert torch.equal(out, expected), k
        assert seen == expected_counts([k] * 4, case.num_blocks), k
        assert stats.blocks_run[0].tolist() == [k] * 4
        # guards against a degenerate model whose exits equal the full output
        assert not torch.allclose(out, run(case), atol=1e-4), k


# ------------------------------------------------------------------------------------------------ per row
@pytest.mark.parametrize("schedule", ["timestep", "dynamic"])
def test_per_row_exits_compact_the_batch(case, schedule):
    n = case.num_blocks
    depths = [n, max(n - 1, 1), 2 if n > 2 else 1, 1]  # t = 10, 300, 600, 900
    if schedule == "timestep":
        policy = TimestepSchedule(boundaries=[200, 500, 800], depths=depths)
    else:
        policy = RowDepths(depths)
    reference = single_row_reference(case, depths)
    apply(case, EarlyExitConfig(policy=policy))
    with case.count(case.model) as seen:
        out = run(case)
    assert get_exit_stats(case.model).blocks_run[0].tolist() == depths
    assert seen == expected_counts(depths, n)  # rows that left are not computed any more
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    for r, d in enumerate(depths):
        torch.testing.assert_close(out[r : r + 1], case.hand_exit(case.select(case.inputs, [r]), d), rtol=0, atol=1e-5)
    if schedule == "dynamic":
        for block, rows in policy.contexts:
            assert rows == [r for r, d in enumerate(depths) if d > block]


def test_all_rows_leave_early_then_later_blocks_are_skipped(case):
    apply(case, EarlyExitConfig(policy=RowDepths([1, 2, 1, 2])))
    with case.count(case.model) as seen:
        out = run(case)
    assert seen == expected_counts([1, 2, 1, 2], case.num_blocks)
    torch.testing.assert_close(out, single_row_reference(case, [1, 2, 1, 2]), rtol=0, atol=1e-5)


def test_uncertainty_policy_with_heads(case):
    model = case.model
    heads = UncertaintyHeads.from_model(model, condition_on_timestep=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in heads.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    apply(case, EarlyExitConfig(policy=UncertaintyThreshold(0.5, patience=1)), heads=heads)
    out = run(case)
    depths = get_exit_stats(model).blocks_run[0].tolist()
    assert all(1 <= d <= case.num_blocks for d in depths)
    torch.testing.assert_close(out, single_row_reference(case, depths), rtol=0, atol=1e-5)
    # a threshold nobody reaches is the stock model
    set_exit_config(model, EarlyExitConfig(policy=UncertaintyThreshold(0.999999, patience=1)))
    out = run(case)
    remove_early_exit(model)
    assert torch.equal(out, run(case))


# ------------------------------------------------------------------------------------------------ CFG pairs
@pytest.mark.parametrize("pairing, expected", [("together", [3, 3, 3, 3]), ("independent", [1, 1, 3, 3])])
def test_cfg_pairs(case, pairing, expected):
    if case.num_blocks < 3 or not case.cfg_pairs:
        pytest.skip("needs >= 3 blocks and a model with guidance batches")
    inputs = case.cfg_inputs()
    apply(case, EarlyExitConfig(policy=WantsFrom([0, 0, 2, 2]), cfg_pairing=pairing))
    out = run(case, inputs)
    stats = get_exit_stats(case.model)
    assert stats.cfg_paired == [pairing == "together"]
    assert stats.blocks_run[0].tolist() == expected
    torch.testing.assert_close(out, single_row_reference(case, expected, inputs), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ removal
def test_remove_restores_bit_exact_and_leaves_no_trace(case):
    model = case.model
    stock = run(case)
    modules = [m for m in model.modules()]
    apply(case, EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[case.num_blocks, 1])))
    assert is_early_exit_applied(model)
    assert not torch.equal(run(case), stock)
    remove_early_exit(model)
    assert not is_early_exit_applied(model)
    for module in modules:
        assert not hasattr(module, "_diffusers_hook")
        assert "forward" not in module.__dict__
    with case.count(model) as seen:
        assert torch.equal(run(case), stock)
    assert seen == expected_counts([case.num_blocks] * 4, case.num_blocks)


def test_exit_gradients_flow_to_the_early_blocks(case):
    model = case.model.train()
    apply(case, EarlyExitConfig(policy=StaticDepth(1)))
    with torch.enable_grad():
        model(**case.inputs).sample.square().mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()


def count_block_computations(model: nn.Module):
    """`count_pre_hooks` on the first forecastable sub-module of every block of the model's declared family."""
    adapter = get_adapter(model)
    return count_pre_hooks([(i, adapter.forecast_modules(i)[0][1]) for i in range(adapter.num_blocks)])


@contextlib.contextmanager
def count_pre_hooks(modules: list[tuple[int, nn.Module]]):
    """[(index, batch rows)] of every call of each module (a forward pre-hook, positional or keyword input)."""
    seen: list[tuple[int, int]] = []

    def hook(index):
        def record(module, args, kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            seen.append((index, first.shape[0]))

        return record

    handles = [m.register_forward_pre_hook(hook(i), with_kwargs=True) for i, m in modules]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


__all__ = [name for name in dict(globals()) if name.startswith("test_")] + ["pytestmark"]

"""The engine for U-Nets: rows truncate after a down block and rejoin at the matching up block.

A row of depth d leaves after down block d-1 and rejoins at up block N-d with its bridged features (the learned
replacement of the inner levels it skipped, `UNetExitBridges`); the mid block and the inner up blocks run on
the deeper rows only. The design and why: `ee_diffusion.unet.adapter` and docs/backbones.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..families.base import BackboneAdapter
from ..config import EarlyExitConfig
from ..engine.calls import CallState, EngineBase


class UNetCallState(CallState):
    """A U-Net call: which rows ran each level, and the rows that truncated there with their bridged input.

    level_rows[i]: the rows that ran down block i (None = all rows), present once it ran; joins[i]: (leaving,
    staying, bridged) of the rows that truncated after down block i, local indices into level_rows[i] (None,
    None when all of them left), bridged (J, C, H, W) their replacement input of up block N-1-i;
    level_sliced[i]: up-block inputs already gathered to level_rows[i].
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.level_rows: dict[int, torch.Tensor | None] = {}
        self.joins: dict[int, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]] = {}
        self.level_sliced: dict[int, dict[str, torch.Tensor]] = {}


class UNetEngine(EngineBase):
    """Depth truncation of a U-Net: hooks its down blocks, mid block and up blocks."""

    def __init__(self, adapter: BackboneAdapter, config: EarlyExitConfig, heads: nn.Module | None,
                 bridges: nn.Module | None) -> None:
        super().__init__(adapter, config, heads)
        self.bridges = bridges

    def hook_targets(self) -> list[tuple[nn.Module, Callable]]:
        model = self.adapter.model
        n = self.num_blocks
        targets = [(down, functools.partial(self.run_down, i, down)) for i, down in enumerate(model.down_blocks)]
        if model.mid_block is not None:
            targets.append((model.mid_block, functools.partial(self.run_mid, model.mid_block)))
        targets += [(up, functools.partial(self.run_up, n - 1 - j, up)) for j, up in enumerate(model.up_blocks)]
        return targets

    def new_call_state(self, batch_size: int, timesteps: torch.Tensor, paired: bool) -> UNetCallState:
        return UNetCallState(batch_size, timesteps, self.num_blocks, paired)

    def run_down(self, level: int, module: nn.Module, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        state = self.call
        if state is None or self.policy is None:
            return forward(*args, **kwargs)
        adapter = self.adapter
        inputs = adapter.named_inputs(module, args, kwargs)
        hidden = inputs.pop("hidden_states")
        if state.done:
            # No row reaches this level: not computed. The placeholders keep the model's skip bookkeeping
            # (how many res samples each block adds) intact; only skipped up blocks would read them.
            return hidden, (hidden,) * adapter.num_res_samples(level)
        if state.compacted:
            inputs = self.slice_inputs(state, inputs, self.adapter.batch_inputs, state.rows, state.sliced)
        state.level_rows[level] = state.rows if state.compacted else None
        out, res = forward(hidden, **inputs)  # (A, C, H/2, W/2), res_samples at this level's rows
        if level == self.num_blocks - 1:
            return out, res
        # The level's feature map before downsampling (A, C_i, H_i, W_i): what the bridge and the head read.
        feature = res[adapter.feature_index(level)]
        carried = (level, res, feature, inputs["temb"])
        if state.uniform_depth is not None:
            if level == state.uniform_depth - 1:
                everyone = torch.arange(out.shape[0], device=out.device)
                out, carried = self.commit(state, out, everyone, everyone, everyone[:0], carried)
        elif state.plan is not None:
            step = state.plan[level]
            if step is not None:
                out, carried = self.commit(state, out, *step, carried)
        elif self.policy.decides_after(level, self.num_blocks):
            out, carried = self.decide(state, level, out, carried, head_input=feature, hidden=None, block_input=None)
        return out, carried[1]  # (hidden for the next down block, res_samples)

    def commit(
        self, state: UNetCallState, out: torch.Tensor, leaving: torch.Tensor, leaving_rows: torch.Tensor,
        staying: torch.Tensor, carried: Any, parked_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Bridge the leaving rows' features for their rejoin; compact what flows deeper.

        `carried` is (level, res_samples, feature, temb); returns (out, carried) with both compacted. Training-free
        caches (which park values of their own, `on_decision`) are refused for U-Nets at apply time.
        """
        level, res, feature, temb = carried
        if staying.numel() == 0:
            state.joins[level] = (None, None, self.bridges(level, feature, temb))
            state.done = True
            return out, carried
        bridged = self.bridges(level, feature.index_select(0, leaving), temb.index_select(0, leaving))
        state.joins[level] = (leaving, staying, bridged)
        # The downsampled output (last res sample) feeds the next level's up block: staying rows only.
        res = (*res[:-1], res[-1].index_select(0, staying))
        state.keep_rows(staying)
        return out.index_select(0, staying), (level, res, feature, temb)

    def run_mid(self, module: nn.Module, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        state = self.call
        if state is None or self.policy is None:
            return forward(*args, **kwargs)
        inputs = self.adapter.named_inputs(module, args, kwargs)
        hidden = inputs.pop("hidden_states")
        if state.done:
            return hidden
        if state.compacted:
            inputs = self.slice_inputs(state, inputs, self.adapter.batch_inputs, state.rows, state.sliced)
        return forward(hidden, **inputs)

    def run_up(self, level: int, module: nn.Module, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        state = self.call
        if state is None or self.policy is None:
            return forward(*args, **kwargs)
        inputs = self.adapter.named_inputs(module, args, kwargs)
        hidden = inputs.pop("hidden_states")
        if level not in state.level_rows:
            return hidden  # no row reached this level: the up block is skipped with its down block
        join = state.joins.get(level)
        if join is not None:
            leaving, staying, bridged = join
            if leaving is None:
                hidden = bridged  # every row of this level truncated here
            else:
                # Rejoin in batch order: (A_i, C, H, W) from the deeper rows (A_{i+1}) and the bridged ones (J).
                merged = bridged.new_empty((leaving.shape[0] + staying.shape[0], *bridged.shape[1:]))
                merged.index_copy_(0, leaving, bridged)
                merged.index_copy_(0, staying, hidden.to(bridged.dtype))
                hidden = merged
        rows = state.level_rows[level]
        if rows is not None:
            cache = state.level_sliced.setdefault(level, {})
            inputs = self.slice_inputs(state, inputs, self.adapter.batch_inputs, rows, cache)
        return forward(hidden, **inputs)

"""Early exit on a stock diffusers model, through diffusers' hook registry.

Two kinds of hook do the work:

- a model hook (`new_forward` on the model) opens a fresh `_CallState` at every model call - batch size,
  per-row timesteps, the exit plan - records the exit statistics when the call ends, and drops the state
  when the call raises;
- a block hook (`new_forward` on every block) runs the block on the rows that are still active only, asks
  the policy which of them stop, parks the stopped rows' hidden states and hands the smaller batch on.

Rows leave the batch for good: a row that exited after block k is never seen by blocks k+1..N-1 (its inputs
are gathered away, and a block whose rows have all exited is not called at all). After the last block the
parked rows are scattered back, so the model's own output head decodes every row from the hidden state of
its own exit block - DiT-family models share that head across blocks, which makes this exactly the
"decode of the exit block".

Blocks that return more than the hidden state (SD3's `(encoder_hidden_states, hidden_states)`) go through the
adapter's `split_block_output`/`join_block_output`: the hidden state is parked, the carried stream is compacted
with its rows. U-Nets use `_UNetEngine`: rows truncate after a down block and rejoin at the matching up block
with a learned replacement of the skipped inner levels (`ee_diffusion/engine_unet.py`, design in
`ee_diffusion.backbones.unet`).

Nothing is stored on the model but the hooks; `remove_early_exit` restores the original forwards.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ._compat import HookRegistry, ModelHook
from .backbones import BackboneAdapter, get_adapter
from .config import EarlyExitConfig
from .heads import UncertaintyHeads
from .schedules.base import ExitContext
from .stats import ExitStats

_MODEL_HOOK = "ee_diffusion.early_exit"
_BLOCK_HOOK = "ee_diffusion.early_exit.block"


class _CallState:
    """Everything that lives for one model call. Tensors are on the model's device unless noted."""

    def __init__(self, batch_size: int, timesteps: torch.Tensor, num_blocks: int, cfg_paired: bool) -> None:
        self.batch_size = batch_size
        self.timesteps = timesteps  # (B,) float
        self.cfg_paired = cfg_paired
        device = timesteps.device
        self.rows = torch.arange(batch_size, device=device)  # (A,) positions of the active rows, ascending
        self.compacted = False  # True once some row has left, i.e. A < B
        self.done = False  # True once every row has exited: later blocks are skipped
        self.exit_depth = torch.full((batch_size,), num_blocks, dtype=torch.long, device=device)  # (B,)
        self.parked: torch.Tensor | None = None  # (B, L, D) hidden states of rows that exited
        self.sliced: dict[str, torch.Tensor] = {}  # block inputs already gathered to the active rows
        self.active_timesteps = timesteps  # (A,)
        self.condition: torch.Tensor | None = None  # (B, D) timestep embedding for conditioned heads
        self.scratch: dict[str, Any] = {}
        # Static plan: either one depth for every row, or per block the (local exit, global exit, local keep)
        # index triples, computed once so that no block needs a device-to-host sync.
        self.uniform_depth: int | None = None
        self.plan: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] | None = None
        # (B,) bool, made on first use: rows a non-finite certainty or exit state kept from exiting (dynamic).
        self.fallback: torch.Tensor | None = None
        # U-Nets only. level_rows[i]: the rows that ran down block i (None = all rows), present once it ran;
        # joins[i]: (leaving, staying, bridged) of the rows that truncated after down block i, local indices
        # into level_rows[i] (None, None when all of them left), bridged (J, C, H, W) their replacement input
        # of up block N-1-i; level_sliced[i]: up-block inputs already gathered to level_rows[i].
        self.level_rows: dict[int, torch.Tensor | None] = {}
        self.joins: dict[int, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]] = {}
        self.level_sliced: dict[int, dict[str, torch.Tensor]] = {}


class _EarlyExitEngine:
    """The state the hooks share: adapter, config, heads, and the current call."""

    def __init__(self, adapter: BackboneAdapter, config: EarlyExitConfig, heads: UncertaintyHeads | None) -> None:
        self.adapter = adapter
        self.num_blocks = adapter.num_blocks
        self.config = config
        self.heads = heads
        self.call: _CallState | None = None
        self.last_stats: ExitStats | None = None
        self.recorders: list[ExitStats] = []
        # Per-row state of policies that remember across calls (CachedTailResidual); see ExitContext.persistent.
        self.persistent: dict[str, Any] = {}
        self._model_params = tuple(inspect.signature(adapter.model.forward).parameters)

    def hook_targets(self) -> list[tuple[nn.Module, Callable]]:
        """(module, runner) for every module whose forward the engine replaces; runner(forward, args, kwargs)."""
        return [(block, functools.partial(self.run_block, index)) for index, block in enumerate(self.adapter.blocks)]

    # ----------------------------------------------------------------------------------------------- model call
    def begin(self, args: tuple, kwargs: dict[str, Any]) -> None:
        inputs = dict(zip(self._model_params, args))
        inputs.update(kwargs)
        batch_size, timesteps = self.adapter.batch_and_timesteps(inputs)
        policy = self.config.policy
        paired = (
            policy is not None
            and self.config.cfg_pairing == "together"
            and self.adapter.is_cfg_pair_batch(inputs, timesteps)
        )
        state = _CallState(batch_size, timesteps, self.num_blocks, paired)
        self.call = state
        if policy is None:
            return
        if batch_size == 0:
            raise ValueError("early exit needs a batch of at least one row, got an empty batch (batch size 0)")
        self.adapter.check_call(inputs)
        if policy.needs_certainty:
            param = next(self.heads.parameters())
            if param.device != timesteps.device:
                raise ValueError(
                    f"the uncertainty heads are on {param.device} but the model runs on {timesteps.device}; "
                    f"move them with `heads.to({str(timesteps.device)!r})`"
                )
            if self.heads.conditioned:
                state.condition = self.adapter.timestep_embedding(timesteps, param.dtype)
        if hasattr(policy, "plan_depths"):
            self._plan(state, policy.plan_depths(timesteps, self.num_blocks))

    def _plan(self, state: _CallState, depths: torch.Tensor) -> None:
        """Turn (B,) per-row depths into per-block index tensors, with one device-to-host copy."""
        n = self.num_blocks
        if depths.shape != (state.batch_size,):
            raise ValueError(f"plan_depths must return shape ({state.batch_size},), got {tuple(depths.shape)}")
        if state.cfg_paired:
            half = state.batch_size // 2
            pair_depth = torch.maximum(depths[:half], depths[half:])
            depths = torch.cat([pair_depth, pair_depth])
        depths = depths.clamp(1, n)
        state.exit_depth = depths.to(torch.long)
        host = depths.cpu()
        lo, hi = int(host.min()), int(host.max())
        if lo == hi:
            state.uniform_depth = lo
            return
        device = depths.device
        plan: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * n
        active = torch.arange(state.batch_size)
        # Up to and including block hi-1, where the deepest rows leave (the last block needs no entry: its
        # output is scattered back anyway).
        for block in range(lo - 1, min(hi, n - 1)):
            leaving = host[active] == block + 1  # (A,) bool, on the CPU
            if leaving.any():
                plan[block] = (
                    leaving.nonzero().squeeze(1).to(device),
                    active[leaving].to(device),
                    (~leaving).nonzero().squeeze(1).to(device),
                )
                active = active[~leaving]
        state.plan = plan

    def end(self, output: Any = None) -> None:
        state = self.call
        self.call = None
        if state is None:
            return
        nonfinite = self._nonfinite_rows(state, output)
        stats = ExitStats(self.num_blocks)
        stats.record(state.timesteps, state.exit_depth, state.cfg_paired, state.fallback, nonfinite)
        self.last_stats = stats
        for recorder in self.recorders:
            recorder.record(state.timesteps, state.exit_depth, state.cfg_paired, state.fallback, nonfinite)
        bad = stats.nonfinite[0]  # (B,) bool, on the CPU: the per-call sync that recording needs anyway
        if self.config.on_nonfinite == "raise" and bool(bad.any()):
            fell_back = stats.fallbacks[0].nonzero().flatten().tolist()
            raise ValueError(
                f"the model output holds NaN/inf for rows {bad.nonzero().flatten().tolist()} of a batch of "
                f"{state.batch_size} (timesteps {stats.timesteps[0][bad].tolist()}, blocks run "
                f"{stats.blocks_run[0][bad].tolist()} of {self.num_blocks}"
                + (f"; rows {fell_back} had already been kept from exiting by non-finite values" if fell_back else "")
                + "); EarlyExitConfig(on_nonfinite='raise'). With on_nonfinite='fallback' such rows are recorded "
                "in ExitStats.nonfinite instead"
            )

    def _nonfinite_rows(self, state: _CallState, output: Any) -> torch.Tensor | None:
        """(B,) bool: rows whose model output holds NaN/inf; None with exits off or an output not batched by row."""
        if self.config.policy is None or output is None:
            return None
        sample = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
        if not isinstance(sample, torch.Tensor) or sample.ndim == 0 or sample.shape[0] != state.batch_size:
            return None
        return ~torch.isfinite(sample.detach()).reshape(state.batch_size, -1).all(1)

    # ---------------------------------------------------------------------------------------------- block call
    def run_block(self, index: int, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        state = self.call
        if state is None or self.config.policy is None:
            return forward(*args, **kwargs)
        adapter = self.adapter
        inputs = adapter.named_block_inputs(args, kwargs)
        hidden = inputs.pop("hidden_states")
        if state.done:
            # Every row has exited: the block is not computed; the parked states flow on to the output head.
            return adapter.passthrough(hidden, inputs)
        if state.compacted:
            inputs = self._slice_inputs(state, inputs)
        # out: (A, L, D); carried: what else the block returns (SD3: the text stream), None for DiT.
        out, carried = adapter.split_block_output(forward(hidden, **inputs))

        if index == self.num_blocks - 1:
            on_final = getattr(self.config.policy, "on_final", None)
            if on_final is not None:
                on_final(self._context(state, index, None, out, hidden))
            if state.parked is None:
                return adapter.join_block_output(out, carried)
            state.parked.index_copy_(0, state.rows, out)
            return adapter.join_block_output(state.parked, carried)

        if state.uniform_depth is not None:
            if index == state.uniform_depth - 1:
                state.done = True  # all rows stop here; out is the full batch
            return adapter.join_block_output(out, carried)
        if state.plan is not None:
            step = state.plan[index]
            if step is None:
                return adapter.join_block_output(out, carried)
            return adapter.join_block_output(*self._commit(state, out, *step, carried=carried))
        decides_after = getattr(self.config.policy, "decides_after", None)
        if decides_after is not None and not decides_after(index, self.num_blocks):
            return adapter.join_block_output(out, carried)  # the policy never stops a row here: no work, no sync
        return adapter.join_block_output(*self._decide(state, index, out, carried, block_input=hidden))

    def _slice_inputs(self, state: _CallState, inputs: dict[str, Any]) -> dict[str, Any]:
        for name in self.adapter.batch_inputs:
            value = inputs.get(name)
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == state.batch_size:
                cached = state.sliced.get(name)
                if cached is None:
                    cached = state.sliced[name] = value.index_select(0, state.rows)
                inputs[name] = cached
        return inputs

    def _context(
        self, state: _CallState, index: int, certainty: torch.Tensor | None, out: torch.Tensor | None,
        block_input: torch.Tensor | None,
    ) -> ExitContext:
        return ExitContext(
            block_index=index,
            num_blocks=self.num_blocks,
            timesteps=state.active_timesteps,
            certainty=certainty,
            rows=state.rows,
            batch_size=state.batch_size,
            scratch=state.scratch,
            hidden=out,
            block_input=block_input,
            persistent=self.persistent,
        )

    def _guard_nonfinite(
        self, state: _CallState, mask: torch.Tensor, exit_value: torch.Tensor, certainty: torch.Tensor | None
    ) -> torch.Tensor:
        """(A,) mask -> (A,) mask without the rows whose certainty or exit state is NaN/inf (`on_nonfinite`).

        Those rows keep running and are marked in `state.fallback`. No host sync: the caller's `nonzero` is the
        block's one sync.
        """
        if certainty is not None:
            # A NaN/inf anywhere in a row's exit state reaches its head's logits, hence its mean certainty:
            # checking the (A,) certainties is enough and far cheaper than the (A, L, D) state.
            finite = torch.isfinite(certainty)
        else:
            finite = torch.isfinite(exit_value.detach()).reshape(exit_value.shape[0], -1).all(1)  # (A,)
        if state.fallback is None:
            state.fallback = torch.zeros(state.batch_size, dtype=torch.bool, device=mask.device)
        state.fallback[state.rows] |= mask & ~finite
        return mask & finite

    def _decide(
        self, state: _CallState, index: int, out: torch.Tensor, carried: Any = None, feature: torch.Tensor | None = None,
        block_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Dynamic policy: ask it which active rows stop after block `index`; returns (hidden, carried).

        `feature` is what the uncertainty head reads (default: `out`, the block's hidden state); `block_input`
        is the block's input hidden state (transformers; None for U-Net levels).
        """
        policy = self.config.policy
        certainty = None
        if policy.needs_certainty:
            condition = None
            if state.condition is not None:
                condition = state.condition.index_select(0, state.rows) if state.compacted else state.condition
            certainty = self.heads(index, out if feature is None else feature, condition, mean=True)  # (A,)
        ctx = self._context(state, index, certainty, out if feature is None else None, block_input)
        mask = policy.exit_mask(ctx)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != state.rows.shape:
            got = f"{mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask)
            raise ValueError(
                f"{type(policy).__name__}.exit_mask must return a bool tensor of shape {tuple(state.rows.shape)} "
                f"(one entry per active row), got {got}"
            )
        mask = self._guard_nonfinite(state, mask, out if feature is None else feature, certainty)
        if state.cfg_paired:
            # A pair stops only when both halves want to; partners are always active together in this mode.
            half = state.batch_size // 2
            wanted = torch.zeros(state.batch_size, dtype=torch.bool, device=mask.device)
            wanted[state.rows] = mask
            both = wanted[:half] & wanted[half:]
            mask = torch.cat([both, both])[state.rows]
        on_decision = getattr(policy, "on_decision", None)
        # (A, ...) what exiting rows park instead of their hidden state (e.g. h_k + cached tail residual), or None.
        parked_values = on_decision(ctx, mask) if on_decision is not None else None
        leaving = mask.nonzero().squeeze(1)  # the one host sync of a dynamic policy, per block
        if leaving.numel() == 0:
            return out, carried
        staying = (~mask).nonzero().squeeze(1)
        state.exit_depth[state.rows[leaving]] = index + 1
        if parked_values is None:  # (U-Net levels park their own way and never receive values)
            return self._commit(state, out, leaving, state.rows[leaving], staying, carried=carried)
        return self._commit(state, out, leaving, state.rows[leaving], staying, carried=carried,
                            parked_values=parked_values)

    def _commit(
        self,
        state: _CallState,
        out: torch.Tensor,
        leaving: torch.Tensor,
        leaving_rows: torch.Tensor,
        staying: torch.Tensor,
        carried: Any = None,
        parked_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Park rows `leaving` (local indices into `out`; `leaving_rows` are their batch positions).

        `parked_values` (A, ...) replaces `out` as what the leaving rows park (default: `out` itself).
        Returns (hidden, carried) for the next block: the staying rows only, unless every row has left. A
        carried stream (SD3's text tokens, (A, L_text, D)) is compacted with the hidden state.
        """
        source = out if parked_values is None else parked_values
        if staying.numel() == 0:
            state.done = True
            if state.parked is None:  # nobody left before, so `source` is the whole batch in order
                return source, carried
            state.parked.index_copy_(0, leaving_rows, source)
            return state.parked, carried
        if state.parked is None:
            state.parked = out.new_empty((state.batch_size, *out.shape[1:]))
        state.parked.index_copy_(0, leaving_rows, source.index_select(0, leaving))
        if isinstance(carried, torch.Tensor) and carried.ndim > 0 and carried.shape[0] == out.shape[0]:
            carried = carried.index_select(0, staying)
        state.rows = state.rows.index_select(0, staying)
        state.active_timesteps = state.active_timesteps.index_select(0, staying)
        state.compacted = True
        state.sliced.clear()
        return out.index_select(0, staying), carried


class _ModelHook(ModelHook):
    def __init__(self, engine: _EarlyExitEngine) -> None:
        super().__init__()
        self.engine = engine

    def new_forward(self, module: nn.Module, *args, **kwargs):
        try:
            self.engine.begin(args, kwargs)
            output = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            # Drop the half-finished call: a stale state would hijack later direct block calls.
            self.engine.call = None
            raise
        self.engine.end(output)
        return output


class _BlockHook(ModelHook):
    def __init__(self, run: Callable) -> None:
        super().__init__()
        self.run = run  # run(forward, args, kwargs), bound to the engine and the block's index

    def new_forward(self, module: nn.Module, *args, **kwargs):
        return self.run(self.fn_ref.original_forward, args, kwargs)


# --------------------------------------------------------------------------------------------------- public API
def _engine_of(model: nn.Module) -> _EarlyExitEngine | None:
    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook(_MODEL_HOOK) if registry is not None else None
    return hook.engine if hook is not None else None


def _require_engine(model: nn.Module) -> _EarlyExitEngine:
    engine = _engine_of(model)
    if engine is None:
        raise ValueError(f"early exit is not applied to this {type(model).__name__}; call apply_early_exit first")
    return engine


def _check_bridges(adapter: BackboneAdapter, bridges: nn.Module | None) -> None:
    from .backbones.unet import UNetExitBridges

    if bridges is None:
        return
    if not getattr(adapter, "truncates", False):
        raise ValueError(
            f"bridges are for U-Nets (UNet2DModel, UNet2DConditionModel); {type(adapter.model).__name__} exits by "
            f"decoding a block's hidden state with its own head: pass bridges=None"
        )
    if not isinstance(bridges, UNetExitBridges):
        raise TypeError(f"bridges must be UNetExitBridges or None, got {type(bridges).__name__}")
    bridges.check_model(adapter.model)


def _check_setup(
    adapter: BackboneAdapter, config: EarlyExitConfig, heads: UncertaintyHeads | None, bridges: nn.Module | None = None
) -> None:
    if not isinstance(config, EarlyExitConfig):
        raise TypeError(f"config must be an EarlyExitConfig, got {type(config).__name__}")
    if heads is not None:
        if not isinstance(heads, UncertaintyHeads):
            raise TypeError(f"heads must be UncertaintyHeads or None, got {type(heads).__name__}")
        heads.check_model(adapter.model)
    policy = config.policy
    if policy is None:
        return
    if getattr(adapter, "truncates", False) and bridges is None:
        raise ValueError(
            f"early exit on a {type(adapter.model).__name__} truncates its inner levels and needs their learned "
            f"replacement: pass `bridges=UNetExitBridges.from_model(model)` (fine-tuned) to apply_early_exit"
        )
    if policy.needs_certainty and heads is None:
        raise ValueError(
            f"{type(policy).__name__} needs certainties: pass `heads=UncertaintyHeads(...)` made for this model"
        )
    validate = getattr(policy, "validate_for", None)
    if validate is not None:
        validate(adapter.num_blocks)


def is_early_exit_applied(model: nn.Module) -> bool:
    """Whether `apply_early_exit` hooks are on `model`."""
    return _engine_of(model) is not None


def apply_early_exit(
    model: nn.Module,
    config: EarlyExitConfig | None = None,
    heads: UncertaintyHeads | None = None,
    bridges: nn.Module | None = None,
) -> None:
    """Hook early exit into a stock diffusers model, in place.

    Args:
        model: a supported diffusers denoiser, e.g. `pipe.transformer` (`DiTTransformer2DModel`,
            `PixArtTransformer2DModel`, `SD3Transformer2DModel`) or `pipe.unet` (`UNet2DModel`,
            `UNet2DConditionModel`).
        config: the exit policy and options; `EarlyExitConfig()` (the default) never exits.
        heads: `UncertaintyHeads` made for this model; required by uncertainty policies.
        bridges: U-Nets only, `UNetExitBridges` made for this model: the learned replacement of the inner
            levels that a truncated row skips (see `ee_diffusion.backbones.unet`); required when a U-Net
            policy is set.

    After every model call, `get_exit_stats(model)` tells how many blocks each row ran.

    ```py
    >>> import torch
    >>> from diffusers import DiTTransformer2DModel
    >>> from ee_diffusion import EarlyExitConfig, apply_early_exit, get_exit_stats, remove_early_exit
    >>> from ee_diffusion.schedules import TimestepSchedule
    >>> model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, num_layers=4,
    ...                               sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1).eval()
    >>> apply_early_exit(model, EarlyExitConfig(policy=TimestepSchedule(boundaries=[500], depths=[4, 2])))
    >>> out = model(torch.randn(2, 1, 8, 8), timestep=torch.tensor([100, 900]), class_labels=torch.tensor([3, 5]))
    >>> get_exit_stats(model).blocks_run[0].tolist()
    [4, 2]
    >>> remove_early_exit(model)

    ```
    """
    config = EarlyExitConfig() if config is None else config
    adapter = get_adapter(model)
    if is_early_exit_applied(model):
        raise ValueError(
            f"early exit is already applied to this {type(model).__name__}; call remove_early_exit(model) first, "
            f"or change the policy with set_exit_config(model, config)"
        )
    _check_bridges(adapter, bridges)
    _check_setup(adapter, config, heads, bridges)
    if getattr(adapter, "truncates", False):
        from .engine_unet import _UNetEngine  # here: it subclasses the engine defined in this module

        engine: _EarlyExitEngine = _UNetEngine(adapter, config, heads, bridges)
    else:
        engine = _EarlyExitEngine(adapter, config, heads)
    HookRegistry.check_if_exists_or_initialize(model).register_hook(_ModelHook(engine), _MODEL_HOOK)
    for module, run in engine.hook_targets():
        HookRegistry.check_if_exists_or_initialize(module).register_hook(_BlockHook(run), _BLOCK_HOOK)


def _unhook(module: nn.Module, name: str) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None:
        return
    registry.remove_hook(name, recurse=False)
    if not registry.hooks:
        # Leave the module as it was before any hook: no registry, no instance-level forward.
        del module._diffusers_hook
        forward = module.__dict__.get("forward")
        if getattr(forward, "__func__", None) is type(module).forward and forward.__self__ is module:
            del module.__dict__["forward"]


def remove_early_exit(model: nn.Module) -> None:
    """Remove the hooks of `apply_early_exit`; the model computes exactly what it did before."""
    engine = _require_engine(model)
    for module, _ in engine.hook_targets():
        _unhook(module, _BLOCK_HOOK)
    _unhook(model, _MODEL_HOOK)
    engine.call = None
    engine.recorders.clear()
    engine.persistent = {}


def reset_exit_state(model: nn.Module) -> None:
    """Forget the per-row state that policies keep across model calls (e.g. `CachedTailResidual`'s caches).

    The state also resets by itself when a new sampling run starts, when the exit config changes and on
    `remove_early_exit`; call this to start afresh explicitly, e.g. between two runs at the same timesteps.
    """
    _require_engine(model).persistent = {}


def exit_state_nbytes(model: nn.Module) -> int:
    """Bytes held by the per-row state that policies keep across model calls (0 when there is none)."""
    total = 0
    for value in _require_engine(model).persistent.values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif hasattr(value, "nbytes"):
            total += int(value.nbytes())
    return total


def set_exit_config(
    model: nn.Module, config: EarlyExitConfig, heads: UncertaintyHeads | None | str = "keep"
) -> None:
    """Change the policy (and optionally the heads) of a model that already has early exit applied."""
    engine = _require_engine(model)
    heads = engine.heads if isinstance(heads, str) and heads == "keep" else heads
    _check_setup(engine.adapter, config, heads, getattr(engine, "bridges", None))
    engine.config = config
    engine.heads = heads
    engine.persistent = {}


def get_exit_stats(model: nn.Module) -> ExitStats | None:
    """Statistics of the last model call (None before the first call)."""
    return _require_engine(model).last_stats


@contextlib.contextmanager
def record_exit_stats(model: nn.Module) -> Iterator[ExitStats]:
    """Collect the statistics of every model call inside the `with` block into one `ExitStats`."""
    engine = _require_engine(model)
    stats = ExitStats(engine.num_blocks)
    engine.recorders.append(stats)
    try:
        yield stats
    finally:
        engine.recorders = [r for r in engine.recorders if r is not stats]


@contextlib.contextmanager
def early_exit(
    model: nn.Module,
    config: EarlyExitConfig | None = None,
    heads: UncertaintyHeads | None = None,
    bridges: nn.Module | None = None,
) -> Iterator[ExitStats]:
    """Run the `with` block with early exit on `model`, then leave the model exactly as it was.

    If the model already has early exit applied, its config and heads are swapped for the block's duration;
    otherwise the hooks are applied and removed again (U-Nets: with `bridges`; an applied engine keeps its
    own). Yields the statistics of every call in the block.
    """
    config = EarlyExitConfig() if config is None else config
    engine = _engine_of(model)
    if engine is None:
        apply_early_exit(model, config, heads, bridges)
        try:
            with record_exit_stats(model) as stats:
                yield stats
        finally:
            remove_early_exit(model)
        return
    previous = (engine.config, engine.heads)
    set_exit_config(model, config, heads)
    try:
        with record_exit_stats(model) as stats:
            yield stats
    finally:
        engine.config, engine.heads = previous

"""A model call's lifecycle, its exit plan and the per-block decisions: what both engines share.

A model hook (`forward_chain.ModelCallHook`, the model's forward) opens a fresh `CallState` at every model call -
batch size, per-row timesteps, guidance pairs, the exit plan - records the exit statistics when the call ends, and
drops the state when the call raises. Block hooks (`BlockCallHook`, every block's forward) hand each block call to
the engine, which runs the block on the rows that are still active and asks the policy which of them stop; a
forecasting cache's sub-modules get the same hook class (`stacks`). How a stopped row leaves depends on the model:
`stacks.SequentialEngine` (declared families: park the image stream for the model's own head) or
`unet.truncation.UNetEngine` (depth truncation).
"""

from __future__ import annotations

import copy as copy_module
import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._compat import checkpoint_function, gradient_checkpointing_on, has_first_block_cache, model_output_sample
from ..caches.base import BranchStates, CacheState, TrainingFreeCache
from ..config import EarlyExitConfig
from ..families.base import BackboneAdapter
from ..layout import BatchLayout, CacheContextReader, CallerContext
from ..policies.base import ExitContext, ExitPolicy, as_exit_policy
from ..stats import ExitStats

class CallState:
    """Everything that lives for one model call. Tensors are on the model's device unless noted."""

    def __init__(self, batch_size: int, timesteps: torch.Tensor, num_blocks: int, paired: bool) -> None:
        self.batch_size = batch_size
        self.timesteps = timesteps  # (B,) float
        self.paired = paired  # rows i and B/2 + i are a guidance pair that exits together
        device = timesteps.device
        self.rows = torch.arange(batch_size, device=device)  # (A,) positions of the active rows, ascending
        self.compacted = False  # True once some row has left, i.e. A < B
        self.done = False  # True once every row has exited: later blocks are skipped
        self.exit_depth = torch.full((batch_size,), num_blocks, dtype=torch.long, device=device)  # (B,)
        self.sliced: dict[str, torch.Tensor] = {}  # block inputs already gathered to the active rows
        self.active_timesteps = timesteps  # (A,)
        self.condition: torch.Tensor | None = None  # (B, D) timestep embedding for conditioned heads
        self.policy_call: Any = None  # what the policy's create_call_state made for this call
        self.cache_state: CacheState | None = None  # a cache's run state for this call's guidance branch
        # Static plan: either one depth for every row, or per block the (local exit, global exit, local keep)
        # index triples, computed once so that no block needs a device-to-host sync.
        self.uniform_depth: int | None = None
        self.plan: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] | None = None
        # Under torch.compile/export, a per-row plan has no host copy: every row runs blocks up to the deepest
        # depth `hi` the policy can plan and keeps the output of its own exit block (masked, no compaction).
        # (lo, hi): the shallowest and deepest depth the policy can plan, known without reading any tensor.
        self.masked: tuple[int, int] | None = None
        # The model's gradient-checkpointing function while the engine checkpoints the blocks itself.
        self.checkpoint: Callable | None = None
        # (B,) bool, made on first use: rows a non-finite certainty or exit state kept from exiting (dynamic).
        self.fallback: torch.Tensor | None = None
        # (B,) bool, set at the end of a call a sub-module forecast served: the rows that computed (statistics).
        self.computed_rows: torch.Tensor | None = None

    def keep_rows(self, staying: torch.Tensor) -> None:
        """Only the active rows at local indices `staying` (A',) go on to the next block."""
        self.rows = self.rows.index_select(0, staying)
        self.active_timesteps = self.active_timesteps.index_select(0, staying)
        self.compacted = True
        self.sliced.clear()


def _per_row(value: Any, batch_size: int) -> bool:
    """Whether `value` is a (B, ...) tensor or a non-empty tuple of them."""
    values = value if isinstance(value, tuple) and value else (value,)
    return all(isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == batch_size for v in values)


def pair_mask(wanted: torch.Tensor) -> torch.Tensor:
    """(B,) per-row wishes of a paired batch -> (B,) exits: a pair stops only when both halves want to."""
    half = wanted.shape[0] // 2
    both = wanted[:half] & wanted[half:]
    return torch.cat([both, both])


def check_foreign_hooks(adapter: BackboneAdapter) -> None:
    """Raise `ValueError` when another hook decides for the same blocks (diffusers' FirstBlockCache)."""
    if adapter.sequential and has_first_block_cache(adapter.blocks[0]):
        raise ValueError(
            f"diffusers' FirstBlockCache is applied to this {type(adapter.model).__name__}: it skips blocks for the "
            f"whole batch while early exit stops rows one by one, so the two cannot decide for one model. Remove "
            f"one of them (FirstBlockCache's hooks, or remove_early_exit(model)), or use EarlyExitConfig() without "
            f"a policy, which composes with it exactly"
        )


class EngineBase:
    """The state the hooks share: adapter, config, policy (or cache) and the cache's run states, heads, and the
    current call."""

    #: Whether the engine can run a per-row plan masked (no compaction, no host sync) under torch.compile/export.
    masked_plans = False

    def __init__(self, adapter: BackboneAdapter, config: EarlyExitConfig, heads: nn.Module | None) -> None:
        self.adapter = adapter
        self.num_blocks = adapter.num_blocks
        self.call: CallState | None = None
        self.last_stats: ExitStats | None = None
        self.recorders: list[ExitStats] = []
        self.layout: BatchLayout | None = None  # declared by the caller (our pipelines); None: infer pairs
        self.bridges: nn.Module | None = None  # U-Nets: what a truncated row's skipped levels are replaced with
        self.context_reader: CacheContextReader | None = None  # on a CacheMixin model: the pipeline's cache_context
        # The last call's sample, (B,) timesteps, other tensor inputs (weak references) and branch: `_unnamed_branch`
        self.last_sample: tuple[weakref.ref, torch.Tensor, dict[str, weakref.ref], int] | None = None
        self._model_params = tuple(inspect.signature(adapter.model.forward).parameters)
        self.configure(config, heads)

    def configure(self, config: EarlyExitConfig, heads: nn.Module | None, state: BranchStates | None = None) -> None:
        """Set the config and heads; a cache's run states are `state`, or fresh ones. `policy` decides the exits (an
        exit policy, or a cache through the exit contract it inherits); `cache` is it if it is a cache, else None."""
        self.config = config
        self.heads = heads
        self.policy: ExitPolicy | None = None if config.policy is None else as_exit_policy(config.policy)
        self.cache: TrainingFreeCache | None = self.policy if isinstance(self.policy, TrainingFreeCache) else None
        if state is None and self.cache is not None:
            first = self.cache.create_state()
            state = None if first is None else BranchStates(self.cache.create_state, first)
        self.policy_state = state  # a cache's run states, one per guidance branch the caller names; else None

    def attach_context_reader(self) -> None:
        """Read what a stock pipeline's `cache_context` says, on a model that has one (`CacheContextReader`)."""
        self.context_reader = CacheContextReader.install(self.adapter.model)

    def detach_context_reader(self) -> None:
        """Give the model its own `cache_context` back."""
        if self.context_reader is not None:
            self.context_reader.uninstall(self.adapter.model)
        self.context_reader = None

    def __deepcopy__(self, memo: dict) -> EngineBase:
        # `copy.deepcopy(model)` reaches the engine through the model's hooks; the copy starts with no call in
        # progress and no recorders (they belong to `record_exit_stats` blocks open on the original).
        copy = object.__new__(type(self))
        memo[id(self)] = copy
        for name, value in vars(self).items():
            setattr(copy, name, copy_module.deepcopy(value, memo))
        copy.call, copy.recorders, copy.last_sample = None, [], None
        return copy

    def hook_targets(self) -> list[tuple[nn.Module, Callable]]:
        """(module, runner) for every module whose forward the engine replaces; runner(forward, args, kwargs)."""
        raise NotImplementedError

    def hookable_modules(self) -> list[nn.Module]:
        """Every module `hook_targets` may name under some policy (what `remove_early_exit` unhooks)."""
        return [module for module, _ in self.hook_targets()]

    def new_call_state(self, batch_size: int, timesteps: torch.Tensor, paired: bool) -> CallState:
        return CallState(batch_size, timesteps, self.num_blocks, paired)

    # ----------------------------------------------------------------------------------------------- model call
    def call_model(self, forward: Callable, args: tuple, kwargs: dict[str, Any]) -> Any:
        """The model's hook: one `CallState` per call; statistics at its end; no stale state after an error."""
        try:
            self.begin(args, kwargs)
            output = forward(*args, **kwargs)
        except BaseException:
            self.close()  # a stale state would hijack later direct block calls
            raise
        self.end(output)
        return output

    def close(self) -> CallState | None:
        """End the current call (if any) and give back the model's gradient checkpointing; returns its state."""
        state, self.call = self.call, None
        if state is not None and state.checkpoint is not None:
            self.adapter.model.gradient_checkpointing = True
        return state

    def begin(self, args: tuple, kwargs: dict[str, Any]) -> None:
        inputs = dict(zip(self._model_params, args))
        inputs.update(kwargs)
        batch_size, timesteps = self.adapter.batch_and_timesteps(inputs)
        policy = self.policy
        paired = policy is not None and self.config.cfg_pairing == "together" and self._paired(inputs, timesteps)
        state = self.new_call_state(batch_size, timesteps, paired)
        self.call = state
        if policy is None:
            return
        if batch_size == 0:
            raise ValueError("early exit needs a batch of at least one row, got an empty batch (batch size 0)")
        self.adapter.check_call(inputs)
        check_foreign_hooks(self.adapter)
        if policy.needs_certainty:
            param = next(self.heads.parameters())
            if param.device != timesteps.device:
                raise ValueError(
                    f"the uncertainty heads are on {param.device} but the model runs on {timesteps.device}; "
                    f"move them with `heads.to({str(timesteps.device)!r})`"
                )
            if self.heads.conditioned:
                state.condition = self.adapter.decoder.timestep_embedding(timesteps, param.dtype)
        state.policy_call = policy.create_call_state(batch_size, timesteps.device)
        if self.policy_state is not None:
            # Keyed by what the caller says: a stock pipeline's cache_context, our pipelines' declared run.
            context = None if self.context_reader is None else self.context_reader.current
            if context is None:
                context = self._unnamed_branch(inputs, timesteps)
            state.cache_state = self.policy_state.for_call(context, self.layout is not None and self.layout.one_run)
        depths = policy.plan_depths(timesteps, self.num_blocks)
        if depths is not None:
            self._plan(state, depths)
        model = self.adapter.model
        if self.adapter.sequential and torch.is_grad_enabled() and gradient_checkpointing_on(model):
            # The model would checkpoint each hooked block call and recompute it in backward, after this call,
            # on the full batch. Instead the engine checkpoints each block's own forward on the rows it really
            # runs, with the model's checkpoint function, and the model's own checkpointing is off until `close`.
            state.checkpoint = checkpoint_function(model)
            model.gradient_checkpointing = False

    def _unnamed_branch(self, inputs: dict[str, Any], timesteps: torch.Tensor) -> CallerContext | None:
        """Guidance run as two calls that no `cache_context` names (ChromaPipeline): a call on the very same sample
        tensor at the same timesteps as the previous one, but with other conditioning tensors (the negative prompt),
        is the next branch, "call k" (None: the first), with a cache state of its own. A call that repeats every input
        is the same branch again; a new step's sample, or a Heun-type second call, is a new tensor."""
        if torch.compiler.is_compiling():
            return None  # a compiled call keeps no Python-side history (the graph would break on it)
        sample = inputs[self.adapter.sample_arg]
        others = {k: v for k, v in inputs.items()
                  if isinstance(v, torch.Tensor) and v is not sample and k != self.adapter.timestep_arg}
        previous = self.last_sample
        count = 0
        if previous is not None and previous[0]() is sample and torch.equal(previous[1], timesteps):
            repeat = previous[2].keys() == others.keys() and all(previous[2][k]() is v for k, v in others.items())
            count = previous[3] if repeat else previous[3] + 1
        # Weak references: the engine keeps no latents or embeddings alive.
        self.last_sample = (weakref.ref(sample), timesteps, {k: weakref.ref(v) for k, v in others.items()}, count)
        return CallerContext(f"call {count}") if count else None

    def _paired(self, inputs: dict[str, Any], timesteps: torch.Tensor) -> bool:
        """Guidance pairs: as the caller says (our layout; a stock pipeline's cache_context name), else inferred."""
        if self.layout is not None:
            return self.layout.paired(timesteps.shape[0])
        said = None if self.context_reader is None else self.context_reader.paired(timesteps.shape[0])
        return self.adapter.is_cfg_pair_batch(inputs, timesteps) if said is None else said

    def _plan(self, state: CallState, depths: torch.Tensor) -> None:
        """Turn (B,) per-row depths into per-block index tensors, with one device-to-host copy."""
        n = self.num_blocks
        if not isinstance(depths, torch.Tensor) or depths.shape != (state.batch_size,):
            got = tuple(depths.shape) if isinstance(depths, torch.Tensor) else type(depths).__name__
            raise ValueError(f"plan_depths must return a tensor of shape ({state.batch_size},), got {got}")
        if state.paired:
            half = state.batch_size // 2
            pair_depth = torch.maximum(depths[:half], depths[half:])
            depths = torch.cat([pair_depth, pair_depth])
        depths = depths.clamp(1, n)
        state.exit_depth = depths.to(torch.long)
        bounds = self.policy.depth_range(n)
        if bounds is not None and bounds[0] == bounds[1]:
            state.uniform_depth = bounds[0]  # known without reading the depths: no host sync
            return
        if self.masked_plans and torch.compiler.is_compiling():
            state.masked = bounds if bounds is not None else (1, n)
            return
        host = depths.cpu()  # the plan's one host sync (under torch.compile of a U-Net: a graph break)
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
        state = self.close()
        if state is None or torch.compiler.is_exporting():
            return  # torch.export traces with fake tensors: nothing to record
        nonfinite = self._nonfinite_rows(state, output)
        stats = ExitStats(self.num_blocks)
        computed = None if state.computed_rows is None else \
            torch.where(state.computed_rows, state.exit_depth, torch.zeros_like(state.exit_depth))
        stats.record(state.timesteps, state.exit_depth, state.paired, state.fallback, nonfinite, computed)
        self.last_stats = stats
        for recorder in self.recorders:
            recorder.extend(stats)
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

    def _nonfinite_rows(self, state: CallState, output: Any) -> torch.Tensor | None:
        """(B,) bool: rows whose model output holds NaN/inf; None with exits off or an output not batched by row."""
        if self.policy is None or output is None:
            return None
        sample = model_output_sample(output)
        if not isinstance(sample, torch.Tensor) or sample.ndim == 0 or sample.shape[0] != state.batch_size:
            return None
        return ~torch.isfinite(sample.detach()).reshape(state.batch_size, -1).all(1)

    # ---------------------------------------------------------------------------------------------- block call
    def slice_inputs(
        self, state: CallState, inputs: dict[str, Any], names: tuple[str, ...], rows: torch.Tensor,
        cache: dict[str, tuple[Any, Any]],
    ) -> dict[str, Any]:
        """Gather the per-row block inputs `names` to `rows` (A,): a (B, ...) tensor, or a tuple of them (a per-row
        rotary table's (cos, sin)). Each is gathered once per `cache` and reused while a block passes the very same
        object (a model that hands every block a new slice of a table, as Chroma does, gets it gathered anew)."""
        for name in names:
            value = inputs.get(name)
            if not _per_row(value, state.batch_size):
                continue
            cached = cache.get(name)
            if cached is None or cached[0] is not value:
                gathered = tuple(v.index_select(0, rows) for v in value) if isinstance(value, tuple) else \
                    value.index_select(0, rows)
                cached = cache[name] = (value, gathered)
            inputs[name] = cached[1]
        return inputs

    def context(
        self, state: CallState, index: int, certainty: torch.Tensor | None, hidden: torch.Tensor | None,
        block_input: torch.Tensor | None,
    ) -> ExitContext:
        return ExitContext(
            block_index=index,
            num_blocks=self.num_blocks,
            timesteps=state.active_timesteps,
            certainty=certainty,
            rows=state.rows,
            batch_size=state.batch_size,
            hidden=hidden,
            block_input=block_input,
            state=state.cache_state,
            call_state=state.policy_call,
        )

    def _guard_nonfinite(
        self, state: CallState, mask: torch.Tensor, head_input: torch.Tensor, certainty: torch.Tensor | None
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
            finite = torch.isfinite(head_input.detach()).reshape(head_input.shape[0], -1).all(1)  # (A,)
        if state.fallback is None:
            state.fallback = torch.zeros(state.batch_size, dtype=torch.bool, device=mask.device)
        state.fallback[state.rows] |= mask & ~finite
        return mask & finite

    def decide(
        self, state: CallState, index: int, out: torch.Tensor, carried: Any, *, head_input: torch.Tensor,
        hidden: torch.Tensor | None, block_input: torch.Tensor | None,
    ) -> tuple[torch.Tensor, Any]:
        """Dynamic policy: ask it which active rows stop after block `index`; returns (out, carried) for what goes on.

        `head_input` is what the uncertainty head reads and what the NaN guard checks (a transformer block's
        output tokens; a U-Net level's feature map); `hidden`/`block_input` are the block's output and input
        tokens that transformer policies see (None on U-Nets).
        """
        policy = self.policy
        certainty = None
        if policy.needs_certainty:
            condition = None
            if state.condition is not None:
                condition = state.condition.index_select(0, state.rows) if state.compacted else state.condition
            certainty = self.heads(index, head_input, condition, mean=True)  # (A,)
        ctx = self.context(state, index, certainty, hidden, block_input)
        mask = policy.exit_mask(ctx)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != state.rows.shape:
            got = f"{mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask)
            raise ValueError(
                f"{type(policy).__name__}.exit_mask must return a bool tensor of shape {tuple(state.rows.shape)} "
                f"(one entry per active row), got {got}"
            )
        mask = self._guard_nonfinite(state, mask, head_input, certainty)
        if state.paired:
            # Partners are always active together in this mode.
            wanted = torch.zeros(state.batch_size, dtype=torch.bool, device=mask.device)
            wanted[state.rows] = mask
            mask = pair_mask(wanted)[state.rows]
        # (A, ...) what exiting rows park instead of their hidden state (a cache's h_k + cached tail residual), or None.
        parked_values = None if self.cache is None else self.cache.on_decision(ctx, mask)
        # The one host sync of a dynamic policy per block (under torch.compile: its one graph break).
        count = int(mask.sum())
        if count == 0:
            return out, carried
        # A stable sort puts the staying rows first and the leaving ones last, each in ascending order: (A,).
        order = torch.argsort(mask.to(torch.uint8), stable=True)
        staying, leaving = order[: mask.shape[0] - count], order[mask.shape[0] - count:]
        state.exit_depth[state.rows[leaving]] = index + 1
        return self.commit(state, out, leaving, state.rows[leaving], staying, carried, parked_values)

    def commit(
        self, state: CallState, out: torch.Tensor, leaving: torch.Tensor, leaving_rows: torch.Tensor,
        staying: torch.Tensor, carried: Any, parked_values: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Rows `leaving` (local indices into `out`; `leaving_rows` their batch positions) stop after this block;
        return (out, carried) for the rows `staying`."""
        raise NotImplementedError

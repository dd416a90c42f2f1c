"""The exit-policy protocol: what the engine asks a policy after every block."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch


@dataclass
class ExitContext:
    """What a policy sees after block `block_index` has run on the rows that are still active.

    Attributes:
        block_index: index of the block that just ran (0-based); exiting now returns the decode of its output.
        num_blocks: number of blocks N of the model.
        timesteps: (A,) float tensor, the timestep of every active row, in training units (0..999 for a
            1000-step schedule).
        certainty: (A,) mean certainty of every active row from the uncertainty heads, or None when the
            policy does not need heads.
        rows: (A,) long tensor, the position of every active row in the model's input batch.
        batch_size: B, the model's input batch size.
        scratch: a dict that lives for one model call, for policies that remember something across blocks
            (for example a per-row streak); the engine empties it at every model call.
        hidden: (A, L, D) the block's output hidden state for the active rows (transformer backbones).
        block_input: (A, L, D) the block's input hidden state for the active rows (transformer backbones).
        persistent: a dict that lives across model calls (a sampling run), for policies with per-row caches;
            the engine empties it when the exit config changes and on `remove_early_exit`.
    """

    block_index: int
    num_blocks: int
    timesteps: torch.Tensor
    certainty: torch.Tensor | None
    rows: torch.Tensor
    batch_size: int
    scratch: dict[str, Any] = field(default_factory=dict)
    hidden: torch.Tensor | None = None
    block_input: torch.Tensor | None = None
    persistent: dict[str, Any] | None = None


@runtime_checkable
class ExitPolicy(Protocol):
    """Decides, after each block, which active rows stop.

    Write your own policy with one method and one attribute:

    ```py
    class ExitWhenNoisy:
        needs_certainty = False

        def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
            # (A,) bool: rows with t >= 900 stop after block 2
            return (ctx.timesteps >= 900) & (ctx.block_index >= 1)
    ```

    A policy that only ever stops rows after some blocks may implement `decides_after(block_index, num_blocks)
    -> bool`; the engine then skips the decision (and its host sync) after every other block.

    A policy that keeps per-row state across calls (see `CachedTailResidual`) may implement
    `on_decision(ctx, mask) -> Tensor (A, ...) | None`, called after the final decision of a block (with
    guidance pairing applied): it returns what the exiting rows park instead of their hidden state; and
    `on_final(ctx)`, called after the last block with the rows that ran fully.

    A policy whose decisions depend only on the timestep may also implement
    `plan_depths(timesteps, num_blocks) -> LongTensor (B,)` (the number of blocks each row runs); the engine then
    plans the whole forward pass up front and never synchronises with the device between blocks.
    """

    needs_certainty: bool

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        """Return a (A,) bool tensor on the rows' device: True for rows that exit after this block."""
        ...


class SerializablePolicy:
    """Mixin for the built-in policies: round-trips through a JSON-friendly dict with a `type` key."""

    registry: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            SerializablePolicy.registry[cls.__name__] = cls

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def policy_from_dict(data: dict[str, Any]) -> ExitPolicy:
    """Rebuild a built-in policy from `policy.to_dict()`."""
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"a policy dict needs a 'type' key, got {data!r}")
    kind = data["type"]
    if kind not in SerializablePolicy.registry:
        raise ValueError(
            f"unknown policy type {kind!r}; known types: {', '.join(sorted(SerializablePolicy.registry))}"
        )
    cls = SerializablePolicy.registry[kind]
    kwargs = {k: v for k, v in data.items() if k != "type"}
    if dataclasses.is_dataclass(cls):
        fields = [f for f in dataclasses.fields(cls) if f.init]
        allowed = sorted(f.name for f in fields)
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {kind} fields {unknown}; allowed: {allowed}")
        missing = [
            f.name
            for f in fields
            if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"{kind} needs the fields {missing}, got {data!r}")
    return cls(**kwargs)

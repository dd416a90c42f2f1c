"""The exit-policy contract: what the engine asks a policy, and when.

`ExitPolicy` declares every extension point as a method with a no-op default, the way diffusers' `ModelHook`
declares its callbacks; the engine calls them, it never probes a policy for optional attributes. A policy that
remembers something across the blocks of one model call (e.g. a per-row streak) keeps it in the object its
`create_call_state` makes. What lives across the calls of a sampling run belongs to the training-free caches,
which have a contract of their own (`ee_diffusion.caches.TrainingFreeCache`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from ..families.base import BackboneAdapter

#: Extension points a policy declares by subclassing `ExitPolicy` (a plain object cannot declare them), and the
#: training-free caches' own (`ee_diffusion.caches.TrainingFreeCache`), which a plain object must not carry either.
EXTENSION_POINTS = ("plan_depths", "depth_range", "decides_after", "validate_for", "create_call_state",
                    "on_decision", "on_final", "create_state", "start_forecast")


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
        rows: (A,) long tensor, the position of every active row in the model's input batch (ascending).
        batch_size: B, the model's input batch size.
        hidden: (A, L, D) the block's output hidden state for the active rows (transformer backbones; None on
            U-Nets).
        block_input: (A, L, D) the block's input hidden state for the active rows (transformer backbones).
        state: a training-free cache's `CacheState` for this call's run (`ee_diffusion.caches`), None for an
            exit policy.
        call_state: what the policy's `create_call_state` made for this model call, or None.
    """

    block_index: int
    num_blocks: int
    timesteps: torch.Tensor
    certainty: torch.Tensor | None
    rows: torch.Tensor
    batch_size: int
    hidden: torch.Tensor | None = None
    block_input: torch.Tensor | None = None
    state: Any = None
    call_state: Any = None


class ExitPolicy:
    """Decides, after each block, which active rows stop. Subclass it and override what you need.

    The one method most policies override is `exit_mask`; the defaults of the others make a policy that
    decides after every block, plans nothing and keeps no state.

    ```py
    >>> import torch
    >>> from ee_diffusion.schedules import ExitContext, ExitPolicy
    >>> class ExitWhenNoisy(ExitPolicy):
    ...     def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
    ...         return (ctx.timesteps >= 900) & (ctx.block_index >= 1)  # (A,) bool
    >>> ctx = ExitContext(block_index=1, num_blocks=4, timesteps=torch.tensor([100.0, 950.0]), certainty=None,
    ...                   rows=torch.arange(2), batch_size=2)
    >>> ExitWhenNoisy().exit_mask(ctx).tolist()
    [False, True]

    ```
    """

    #: Whether the policy reads `ctx.certainty` (the engine then needs `UncertaintyHeads`).
    needs_certainty: ClassVar[bool] = False

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        """(A,) bool tensor on the rows' device: True for rows that exit after this block. Default: none."""
        return torch.zeros(ctx.rows.shape, dtype=torch.bool, device=ctx.rows.device)

    def plan_depths(self, timesteps: torch.Tensor, num_blocks: int) -> torch.Tensor | None:
        """(B,) timesteps -> (B,) long number of blocks each row runs, for policies that depend on the timestep
        only; the engine then plans the forward pass up front with no device sync between blocks. Default:
        None (decide after each block with `exit_mask`)."""
        return None

    def depth_range(self, num_blocks: int) -> tuple[int, int] | None:
        """(shallowest, deepest) depth in 1..num_blocks that `plan_depths` can return, known without reading any
        tensor, or None (default). Equal bounds let the engine skip its host sync; under torch.compile/export
        the bounds limit the blocks a masked plan runs."""
        return None

    def decides_after(self, block_index: int, num_blocks: int) -> bool:
        """Whether rows may stop after this block; False skips the decision (and its host sync). Default: True."""
        return True

    def validate_for(self, adapter: BackboneAdapter) -> None:
        """Raise `ValueError` if the policy cannot run on this backbone (checked at apply time). Default: runs."""

    def create_call_state(self, batch_size: int, device: torch.device) -> Any:
        """What the policy remembers across the blocks of one model call (`ctx.call_state`); default None."""
        return None


class _PlainPolicy(ExitPolicy):
    """A user's plain object with `needs_certainty` and `exit_mask(ctx)`, run as an `ExitPolicy`."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    @property
    def needs_certainty(self) -> bool:  # type: ignore[override]
        return bool(self.policy.needs_certainty)

    def exit_mask(self, ctx: ExitContext) -> torch.Tensor:
        return self.policy.exit_mask(ctx)


def as_exit_policy(policy: Any) -> ExitPolicy:
    """`policy` itself if it is an `ExitPolicy`; a plain object with `needs_certainty` and `exit_mask(ctx)`
    wrapped as one; else a `TypeError` that says how to subclass."""
    if isinstance(policy, ExitPolicy):
        return policy
    name = type(policy).__name__
    if isinstance(policy, type):
        raise TypeError(f"policy must be an ExitPolicy instance, got the class {policy.__name__}; instantiate it")
    if not (callable(getattr(policy, "exit_mask", None)) and hasattr(policy, "needs_certainty")):
        raise TypeError(
            f"policy must be an ExitPolicy (subclass ee_diffusion.schedules.ExitPolicy and override exit_mask), a "
            f"plain object with a `needs_certainty` attribute and an `exit_mask(ctx)` method, or None; got {name}"
        )
    declared = [point for point in EXTENSION_POINTS if hasattr(policy, point)]
    if declared:
        raise TypeError(
            f"{name} defines {declared} but is not an ExitPolicy, so the engine would ignore them: subclass "
            f"ee_diffusion.schedules.ExitPolicy (class {name}(ExitPolicy): ...) to declare them, or "
            f"ee_diffusion.caches.TrainingFreeCache for a cache's run state, tail skip or sub-module forecasts"
        )
    return _PlainPolicy(policy)


class SerializablePolicy(ExitPolicy):
    """Base of the built-in policies and caches: round-trips through a JSON-friendly dict with a `type` key."""

    registry: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            SerializablePolicy.registry[cls.__name__] = cls

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def policy_from_dict(data: dict[str, Any]) -> ExitPolicy:
    """Rebuild a built-in policy or cache from `policy.to_dict()` (the types of the imported modules are known;
    `ee_diffusion.schedules` and `ee_diffusion.config` import them all)."""
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

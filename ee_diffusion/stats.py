"""Exit statistics: how many blocks every row ran, and computed, at every model call."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(eq=False)
class ExitStats:
    """Blocks run and computed, per model call and per row.

    A sampling loop calls the model once per step (twice for Heun-type schedulers, twice when guidance runs as two
    calls), so "call" below is one model call. What it covers depends on where it comes from: `get_exit_stats`
    gives the last model call only; `record_exit_stats`, our pipelines' `out.exit_stats` and `summary(pipe)` cover
    every call of a run. All tensors live on the CPU.

    Attributes:
        num_blocks: the model's number of blocks N (full depth).
        timesteps: one (B,) float tensor per call, the timestep of every row.
        blocks_run: one (B,) long tensor per call, the number of blocks every row ran (N = no exit).
        computed: one (B,) long tensor per call, the number of those blocks whose attention and feed-forward the
            row computed: `blocks_run`, except for the rows a sub-module forecast (`BlockForecast`) stood in for
            at that call (0: every one of its blocks ran on forecast outputs).
        cfg_paired: one bool per call, whether classifier-free-guidance pairs exited together.
        fallbacks: one (B,) bool tensor per call: rows that a non-finite certainty or exit hidden state kept
            from exiting at some block (dynamic policies; see `EarlyExitConfig.on_nonfinite`).
        nonfinite: one (B,) bool tensor per call: rows whose model output held NaN/inf (checked with exits on).
    """

    num_blocks: int
    timesteps: list[torch.Tensor] = field(default_factory=list)
    blocks_run: list[torch.Tensor] = field(default_factory=list)
    cfg_paired: list[bool] = field(default_factory=list)
    fallbacks: list[torch.Tensor] = field(default_factory=list)
    nonfinite: list[torch.Tensor] = field(default_factory=list)
    computed: list[torch.Tensor] = field(default_factory=list)

    def record(
        self,
        timesteps: torch.Tensor,
        blocks_run: torch.Tensor,
        cfg_paired: bool,
        fallbacks: torch.Tensor | None = None,
        nonfinite: torch.Tensor | None = None,
        computed: torch.Tensor | None = None,
    ) -> None:
        self.timesteps.append(timesteps.detach().float().cpu())
        self.blocks_run.append(blocks_run.detach().cpu())
        self.computed.append(self.blocks_run[-1] if computed is None else computed.detach().cpu())
        self.cfg_paired.append(cfg_paired)
        none = torch.zeros(blocks_run.shape, dtype=torch.bool)
        self.fallbacks.append(none if fallbacks is None else fallbacks.detach().cpu())
        self.nonfinite.append(none if nonfinite is None else nonfinite.detach().cpu())

    def extend(self, other: "ExitStats") -> None:
        """Append every call of `other` (same model depth), with its fallback and non-finite flags."""
        if other.num_blocks != self.num_blocks:
            raise ValueError(f"cannot merge statistics of a {other.num_blocks}-block model into {self.num_blocks} blocks")
        for name in ("timesteps", "blocks_run", "cfg_paired", "fallbacks", "nonfinite", "computed"):
            getattr(self, name).extend(getattr(other, name))

    @property
    def num_calls(self) -> int:
        return len(self.blocks_run)

    @property
    def total_blocks(self) -> int:
        """Block evaluations summed over rows and calls."""
        return int(sum(int(b.sum()) for b in self.blocks_run))

    @property
    def full_blocks(self) -> int:
        """Block evaluations the full model would have spent on the same calls."""
        return int(sum(b.numel() for b in self.blocks_run)) * self.num_blocks

    @property
    def depth_fraction(self) -> float:
        """Fraction of full depth that ran (1.0 = no exits)."""
        full = self.full_blocks
        return self.total_blocks / full if full else 1.0

    @property
    def total_computed(self) -> int:
        """Blocks whose attention and feed-forward were computed, summed over rows and calls."""
        return int(sum(int(c.sum()) for c in self.computed))

    @property
    def compute_fraction(self) -> float:
        """Fraction of the full model's block computations that ran (a forecast or an exit saved the rest)."""
        full = self.full_blocks
        return self.total_computed / full if full else 1.0

    @property
    def num_fallbacks(self) -> int:
        """Row-calls where a non-finite value kept a row from exiting (it ran on towards full depth)."""
        return int(sum(int(f.sum()) for f in self.fallbacks))

    @property
    def num_nonfinite(self) -> int:
        """Row-calls whose model output held NaN/inf."""
        return int(sum(int(f.sum()) for f in self.nonfinite))

    def per_call_mean(self) -> list[float]:
        """Mean blocks run per row, for each call."""
        return [float(b.float().mean()) for b in self.blocks_run]

    def to_dict(self) -> dict:
        return {
            "num_blocks": self.num_blocks,
            "num_calls": self.num_calls,
            "total_blocks": self.total_blocks,
            "full_blocks": self.full_blocks,
            "depth_fraction": self.depth_fraction,
            "total_computed": self.total_computed,
            "compute_fraction": self.compute_fraction,
            "timesteps": [t.tolist() for t in self.timesteps],
            "blocks_run": [b.tolist() for b in self.blocks_run],
            "computed": [c.tolist() for c in self.computed],
            "cfg_paired": list(self.cfg_paired),
            "num_fallbacks": self.num_fallbacks,
            "num_nonfinite": self.num_nonfinite,
            # Per call, the rows (batch positions) concerned; empty lists when every value was finite.
            "fallback_rows": [f.nonzero().flatten().tolist() for f in self.fallbacks],
            "nonfinite_rows": [f.nonzero().flatten().tolist() for f in self.nonfinite],
        }

    def __repr__(self) -> str:
        return (
            f"ExitStats(calls={self.num_calls}, blocks={self.total_blocks}/{self.full_blocks}, "
            f"depth_fraction={self.depth_fraction:.3f}, compute_fraction={self.compute_fraction:.3f})"
        )

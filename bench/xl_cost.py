"""What a `bench-caches` row would cost at DiT-XL/2's width: a block's parts timed once per run, scaled by the work
the row really did.

On our small models (width 64, 16 tokens) a block's norms, adaLN modulation, residual additions and hooks weigh about
as much as its attention and feed-forward; at DiT-XL/2's width (1152 = 16 heads x 72, 256 tokens) attention and
feed-forward dominate. A forecast step still runs every block's gates and residual additions (TaylorSeerCache, and
ours on families without a forecast step, the norms and modulation too) while a cache that skips whole blocks does
not, so the small model's wall-clock alone can rank the two wrongly for the models users run.

`measure_parts` builds a stock `DiTTransformer2DModel` at the shape's width with a few blocks (random weights, CPU,
batch 2 by default; quality is not measurable without trained weights) and times, as medians over rounds:
- `fixed`: a call whose blocks pass their input on (patch embedding, output head);
- `block`: a stock call's time per block, (call - fixed) / blocks;
- `attention`, `feed_forward`: block 0's `attn1` and `ff` on the inputs they received in a stock call;
- `rest`: block - attention - feed_forward (norms, modulation, residual additions);
- `forecast_block`: a call's time per block when every block's attention and feed-forward outputs are forecast, by
  each forecasting implementation: `ours` (`BlockForecast`, forecast order 1) and `diffusers` (TaylorSeerCache, max
  order 1);
- `cache_op`: a cache's per-call elementwise work on one hidden-state tensor (the relative L1 change of a residual
  and an order-2 extrapolation), which every call of a caching row pays.
Which calls forecast is read from the parts that ran (`WorkCounter`), not assumed.

`WorkCounter` counts, while a row samples, the rows that went through the model, through each block (its `norm1`'s
adaLN projection, which a forecast step runs too: entered, computed or forecast), through its attention
(`attn1.to_q`) and its feed-forward (its last linear layer).
`row_cost` is then, per image: calls x fixed + computed blocks x block + forecast blocks (entered, attention not
computed) x forecast_block of the family's implementation (`FORECASTERS`) + caching calls x cache_op. Attention and
feed-forward are computed or forecast together in every family measured (a row that splits them is refused).
`attention`, `feed_forward` and `rest` are reported to show where a block's time goes; the cost uses the blocks
as timed whole. A row that computes every block costs exactly the stock model at its step count; skipped blocks cost
nothing.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ee_diffusion._validation import check_int

#: Whose forecast a family's forecast sub-modules cost (families that skip whole blocks forecast no sub-module).
FORECASTERS = {"block_forecast": "ours", "tail_cache": "ours", "taylorseer_cache": "diffusers"}
#: Families that run the stock model, with no cache bookkeeping per call.
STOCK_FAMILIES = ("reference", "fewer_steps")
_CALLS = 6  # model calls per timed run: enough for a forecast run to compute twice and forecast the rest


@dataclass(frozen=True)
class CostShape:
    """The DiT whose parts are timed: DiT-XL/2 at 256 px by default (32 x 32 latents in 2 x 2 patches: 256 tokens)."""

    width: int = 1152
    heads: int = 16
    latent_side: int = 32
    blocks: int = 3
    batch: int = 2
    repeats: int = 3

    def __post_init__(self) -> None:
        for name in ("width", "heads", "blocks", "batch", "repeats"):
            check_int(getattr(self, name), name, 1)
        check_int(self.latent_side, "latent_side", 2, "latent pixels per side, in 2 x 2 patches")
        if self.width % self.heads or self.latent_side % 2:
            raise ValueError(f"width must be a multiple of heads and latent_side even, got width {self.width}, "
                             f"heads {self.heads}, latent_side {self.latent_side}")

    def build(self) -> nn.Module:
        from diffusers import DiTTransformer2DModel

        return DiTTransformer2DModel(num_attention_heads=self.heads, attention_head_dim=self.width // self.heads,
                                     in_channels=4, out_channels=8, num_layers=self.blocks,
                                     sample_size=self.latent_side, patch_size=2, num_embeds_ada_norm=1000).eval()


class WorkCounter:
    """Rows through the model, its blocks (`norm1.linear`), their attention (`attn1.to_q`) and feed-forward (its last
    linear layer), summed over calls: a skipped block counts in none, a forecast one in `entered` only."""

    def __init__(self, model: nn.Module) -> None:
        self.counts = {"calls": 0, "entered": 0, "attention": 0, "feed_forward": 0}
        self._handles = [model.register_forward_pre_hook(self._hook("calls"), with_kwargs=True)]
        for block in model.transformer_blocks:
            last_linear = [m for m in block.ff.modules() if isinstance(m, nn.Linear)][-1]
            for key, module in (("entered", block.norm1.linear), ("attention", block.attn1.to_q),
                                ("feed_forward", last_linear)):
                self._handles.append(module.register_forward_pre_hook(self._hook(key), with_kwargs=True))

    def _hook(self, key: str) -> Callable[..., None]:
        def count(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.counts[key] += int((args[0] if args else kwargs["hidden_states"]).shape[0])

        return count

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> WorkCounter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Passed(nn.Module):
    """A block that passes its input on: what a call costs outside its blocks. It keeps the block's `norm1`, whose
    embedding DiT's output head reads from block 0."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.norm1 = block.norm1

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextlib.contextmanager
def _blocks_passed(model: nn.Module) -> Iterator[None]:
    """The model with every block passing its input on (`_Passed`)."""
    blocks = model.transformer_blocks
    model.transformer_blocks = nn.ModuleList(_Passed(block) for block in blocks)
    try:
        yield
    finally:
        model.transformer_blocks = blocks


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first warms up
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _run(model: nn.Module, inputs: list[dict[str, Any]]) -> list[tuple[float, dict[str, int]]]:
    """Each call's seconds and the parts it ran."""
    out = []
    for x in inputs:
        with WorkCounter(model) as work:
            start = time.perf_counter()
            model(**x)
            out.append((time.perf_counter() - start, dict(work.counts)))
    return out


@torch.no_grad()
def measure_parts(shape: CostShape) -> dict[str, Any]:
    """Seconds per call at `shape.batch` rows of each part (see the module doc), with the shape and the per-kind
    call counts they are medians of."""
    from diffusers import DDIMScheduler

    from ee_diffusion.eval.baselines import TAYLORSEER_DIT_MODULES, CacheBaseline, diffusers_cache
    from ee_diffusion.hooks import apply_early_exit, remove_early_exit
    from ee_diffusion.config import EarlyExitConfig
    from ee_diffusion.schedules import BlockForecast

    started = time.perf_counter()
    torch.manual_seed(0)
    model = shape.build()
    g = torch.Generator().manual_seed(0)
    b, side = shape.batch, shape.latent_side
    x, labels = torch.randn(b, 4, side, side, generator=g), torch.arange(b) % 1000
    inputs = [{"hidden_states": x, "timestep": torch.full((b,), t), "class_labels": labels}
              for t in range(900, 900 - 100 * _CALLS, -100)]
    captured: dict[str, tuple] = {}

    def grab(key: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.setdefault(key, (args, kwargs))

        return hook

    block = model.transformer_blocks[0]
    handles = [block.attn1.register_forward_pre_hook(grab("attention"), with_kwargs=True),
               block.ff.register_forward_pre_hook(grab("feed_forward"), with_kwargs=True)]
    model(**inputs[0])
    for handle in handles:
        handle.remove()
    with _blocks_passed(model):
        fixed = _timed(lambda: model(**inputs[0]), 2 * shape.repeats)
    modules = {"attention": block.attn1, "feed_forward": block.ff}
    parts = {k: _timed(lambda k=k: modules[k](*captured[k][0], **captured[k][1]), shape.repeats) for k in modules}
    residual, previous = torch.randn(2, b, side * side // 4, shape.width, generator=g)

    def cache_op() -> None:  # the relative L1 change of a residual and an order-2 extrapolation of it
        _ = (residual - previous).abs().mean() / previous.abs().mean()
        _ = residual + (residual - previous) * 0.5 + (residual - 2 * previous) * 0.125

    parts["cache_op"] = _timed(cache_op, 20)
    full, forecast = [], {"ours": [], "diffusers": []}
    ours = EarlyExitConfig(BlockForecast(interval=_CALLS, forecast_order=1))
    theirs = CacheBaseline("taylorseer_cache", {"cache_interval": 4, "disable_cache_before_step": 1, "max_order": 1,
                                                "cache_identifiers": TAYLORSEER_DIT_MODULES})
    for _ in range(shape.repeats):
        full += [s for s, _ in _run(model, inputs)]
        apply_early_exit(model, ours)
        try:
            calls = _run(model, inputs)
        finally:
            remove_early_exit(model)
        forecast["ours"] += [s for s, w in calls if w["attention"] == 0 < w["entered"]]
        with diffusers_cache(model, theirs, DDIMScheduler(), _CALLS):
            calls = _run(model, inputs)
        forecast["diffusers"] += [s for s, w in calls if w["attention"] == 0 < w["entered"]]
    per_block = {"block": statistics.median(full)} | {k: statistics.median(v) for k, v in forecast.items() if v}
    per_block = {k: (v - fixed) / shape.blocks for k, v in per_block.items()}
    rest = max(per_block["block"] - parts["attention"] - parts["feed_forward"], 0.0)
    seconds = {"fixed": fixed, "block": per_block["block"], **parts, "rest": rest,
               "forecast_block": {k: per_block[k] for k in forecast if k in per_block}}
    return {"shape": asdict(shape), "tokens": side * side // 4, "seconds": seconds,
            "forecast_calls": {k: len(v) for k, v in forecast.items()}, "stock_calls": len(full),
            "threads": torch.get_num_threads(), "elapsed_s": time.perf_counter() - started}


def row_cost(work: dict[str, float], family: str, parts: dict[str, Any]) -> float:
    """Seconds per image at the parts' width, for `work` counted per image (`WorkCounter.counts` / images)."""
    s = parts["seconds"]
    if abs(work["attention"] - work["feed_forward"]) > 1e-9:
        raise ValueError(f"a block computing its attention but forecasting its feed-forward (or the reverse) is not "
                         f"modelled; got attention {work['attention']:g} and feed_forward {work['feed_forward']:g} "
                         f"per image (family {family!r})")
    forecast = work["entered"] - work["attention"]
    if forecast > 0 and family not in FORECASTERS:
        raise ValueError(f"family {family!r} forecast {forecast:g} blocks per image, but no forecast cost is measured "
                         f"for it; known forecasting families: {sorted(FORECASTERS)}")
    cost = work["calls"] * s["fixed"] + work["attention"] * s["block"]
    if forecast > 0:
        cost += forecast * s["forecast_block"][FORECASTERS[family]]
    if family not in STOCK_FAMILIES:
        cost += work["calls"] * s["cache_op"]
    return cost / parts["shape"]["batch"]


def add_costs(rows: dict[str, dict[str, Any]], parts: dict[str, Any], reference: str) -> None:
    """`row["xl_cost"]` of every row with its `work`: seconds per image and the speedup over `reference`'s."""
    base = row_cost(rows[reference]["work"], rows[reference]["family"], parts)
    for row in rows.values():
        cost = row_cost(row["work"], row["family"], parts)
        row["xl_cost"] = {"s_per_image": cost, "speedup": base / cost}

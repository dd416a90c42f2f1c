"""The training-free caches on every declared family: per row (a row's output is what it gets alone), and guidance
branches that a stock pipeline runs as two calls under diffusers' `cache_context` kept apart."""

from __future__ import annotations

import pytest
import torch

from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, get_exit_stats, reset_exit_state
from ee_diffusion.schedules import BlockForecast, CachedTailResidual
from ee_diffusion import testing
from ee_diffusion.adapters import get_adapter
from ee_diffusion.testing import tiny_dit, tiny_pixart, tiny_sd3

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = (900.0, 860.0, 820.0, 780.0)  # one sampling run's timesteps (0-999)
SHARED = ("txt_ids", "img_ids", "img_shapes")  # inputs every row shares
BATCH_SECOND = ("encoder_hidden_states_llama3",)  # (layers, B, L, D): HiDream's Llama layers


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


#: The newer families' stand-ins (`ee_diffusion.testing.tiny_<name>`, with `<name>_inputs`), by family name.
NEWER = {"Flux": "flux", "Qwen-Image": "qwenimage", "Wan": "wan", "CogVideoX": "cogvideox", "Sana": "sana",
         "HunyuanVideo": "hunyuanvideo", "CogView4": "cogview4", "Chroma": "chroma", "LTX-Video": "ltx",
         "AuraFlow": "auraflow", "Lumina2": "lumina2", "HunyuanDiT": "hunyuandit", "HiDream": "hidream"}


def make(family: str):
    """(model, inputs for 2 rows, without the timestep) of a tiny stand-in."""
    if family in NEWER:
        model = getattr(testing, f"tiny_{NEWER[family]}")()
        inputs = getattr(testing, f"{NEWER[family]}_inputs")(model, batch=2)
    elif family == "DiT":
        model = tiny_dit(num_layers=3)
        inputs = {"hidden_states": _randn(2, 1, 8, 8, seed=1), "class_labels": torch.tensor([1, 2])}
    else:
        model = tiny_pixart(num_layers=3) if family == "PixArt" else tiny_sd3(num_layers=3)
        inputs = {"hidden_states": _randn(2, 4, 8, 8, seed=1), "encoder_hidden_states": _randn(2, 5, 16, seed=2)}
        if family == "SD3":
            inputs["pooled_projections"] = _randn(2, 8, seed=3)
    inputs.pop(get_adapter(model).timestep_arg, None)  # `timestep`; HiDream's `timesteps`
    return model, inputs


def model_timestep(model, t: float, batch: int) -> torch.Tensor:
    """A 0-999 timestep as the model's own argument, by its family's convention (Flux: t/1000; Lumina2: 1 - t/1000)."""
    adapter = get_adapter(model)
    value = t / adapter.timestep_scale
    return torch.full((batch,), 1 - value if adapter.timestep_reversed else value)


def rows(inputs: dict, index: int) -> dict:
    one = slice(index, index + 1)
    return {k: v if not isinstance(v, torch.Tensor) or k in SHARED else v[:, one] if k in BATCH_SECOND else v[one]
            for k, v in inputs.items()}


def sample_run(model, inputs: dict) -> list[torch.Tensor]:
    out = []
    with torch.no_grad():
        for t in RUN:
            batch = next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
            timestep = {get_adapter(model).timestep_arg: model_timestep(model, t, batch)}
            out.append(model(**inputs, **timestep).sample)
    return out


FAMILIES = [
    "DiT", "PixArt", "SD3", "Flux", "Qwen-Image", "Wan", "CogVideoX", "Sana", "HunyuanVideo", "CogView4", "Chroma",
    "LTX-Video", "AuraFlow", "Lumina2", "HunyuanDiT", "HiDream",
]
#: The tail cache's decision block: AuraFlow's, Chroma's and HiDream's tail residual must lie on their joint sequence
#: (blocks 2+).
EXIT_BLOCK = {"AuraFlow": 3, "Chroma": 3, "HiDream": 3}
CACHES = {
    "tail": lambda k: CachedTailResidual(threshold=1e9, forecast_order=1, exit_block=k),  # rows skip when they may
    "forecast": lambda k: BlockForecast(interval=2, forecast_order=1),
}


@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_cache_works_per_row_on_every_family(family, cache):
    model, inputs = make(family)
    stock = sample_run(model, inputs)
    exit_block = EXIT_BLOCK.get(family, 1)
    apply_early_exit(model, EarlyExitConfig(policy=CACHES[cache](exit_block)))
    together = sample_run(model, inputs)
    if cache == "tail":  # rows really skipped the tail on the later calls
        assert get_exit_stats(model).blocks_run[0].tolist() == [exit_block] * 2
    assert not torch.allclose(together[-1], stock[-1], atol=1e-4)  # the cache changed something
    for index in range(2):
        reset_exit_state(model)
        alone = sample_run(model, rows(inputs, index))
        for call, expected in zip(together, alone):
            torch.testing.assert_close(call[index : index + 1], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["Qwen-Image", "Wan", "HunyuanVideo", "CogView4"])
def test_guidance_branches_run_as_two_calls_keep_their_own_state(family):
    """QwenImagePipeline, WanPipeline and HunyuanVideoPipeline call the model once per branch inside
    `cache_context("cond")` / `cache_context("uncond")`: each branch's cache state is its own, so interleaving the
    branches gives each what it gets in a run of its own."""
    model, inputs = make(family)
    negative = {k: (-v if k == "encoder_hidden_states" else v) for k, v in inputs.items()}
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=2, forecast_order=1)))
    alone = {"cond": sample_run(model, inputs)}
    reset_exit_state(model)
    alone["uncond"] = sample_run(model, negative)
    reset_exit_state(model)
    interleaved = {"cond": [], "uncond": []}
    with torch.no_grad():
        for step, t in enumerate(RUN):
            for name, branch in (("cond", inputs), ("uncond", negative)):
                with model.cache_context(name):
                    interleaved[name].append(model(**branch, timestep=model_timestep(model, t, 2)).sample)
    for name in ("cond", "uncond"):
        for got, expected in zip(interleaved[name], alone[name]):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

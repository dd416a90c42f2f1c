"""Per-run state keyed by what the caller says: our pipelines' declared run, stock pipelines' `cache_context`."""

import copy

import pytest
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel
from diffusers.models.cache_utils import CacheMixin

from ee_diffusion import EarlyExitConfig, apply_early_exit, get_exit_stats, remove_early_exit
from ee_diffusion.hooks import _engine_of
from ee_diffusion.caches import CacheState, TrainingFreeCache
from ee_diffusion.layout import BatchLayout, CacheContextReader
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import BlockForecast, StaticDepth
from ee_diffusion.testing import tiny_dit

pytestmark = pytest.mark.usefixtures("one_thread")


class CacheMixinDiT(DiTTransformer2DModel, CacheMixin):
    """A DiT with diffusers' `CacheMixin`, as the newer families have (Flux, Wan, ...), whose pipelines open
    `cache_context` around every call."""


def _cache_mixin_dit() -> CacheMixinDiT:
    stock = tiny_dit(num_layers=3)
    model = CacheMixinDiT.from_config(stock.config).eval()
    model.load_state_dict(stock.state_dict())
    return model


@torch.no_grad()
def _computed_rows(layout: BatchLayout | None) -> int:
    model = tiny_dit(num_layers=2)
    x, y = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2])
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=3)), layout=layout)
    for t in (900.0, 950.0):  # the timestep goes up between the two calls
        model(x, timestep=torch.full((2,), t), class_labels=y)
    return _engine_of(model).policy_state.get(None).rows_computed


def test_a_declared_run_is_never_restarted_by_the_timesteps():
    assert _computed_rows(None) == 4  # nothing declared: the rise starts a new run, whose first call computes
    assert _computed_rows(BatchLayout(one_run=True)) == 2  # one declared run: the second call forecasts
    with pytest.raises(TypeError, match="one_run must be True or False, got 1"):
        BatchLayout(one_run=1)


class _NothingState(CacheState):
    def reset(self) -> None:
        pass


class _RunRecorder(TrainingFreeCache):
    """A cache that only records, at every model call, whether it was left to infer runs."""

    forecasts_submodules = True

    def __init__(self) -> None:
        self.inferred: list[bool] = []

    def create_state(self) -> CacheState:
        return _NothingState()

    def start_forecast(self, state, timesteps, paired, inputs_key):
        self.inferred.append(state.infer_runs)
        return None


def test_our_pipelines_declare_each_sampling_loop_one_run():
    pipe = EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=2), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    recorder = _RunRecorder()
    pipe([1, 2], num_inference_steps=3, guidance_scale=2.0, exit_config=EarlyExitConfig(policy=recorder),
         output_type="pt")
    assert recorder.inferred == [False] * 3
    with torch.no_grad():  # a stock caller says nothing: the cache infers runs (the last fallback)
        apply_early_exit(pipe.transformer, EarlyExitConfig(policy=recorder))
        pipe.transformer(torch.randn(2, 1, 8, 8), timestep=torch.tensor([5, 5]), class_labels=torch.tensor([1, 2]))
    assert recorder.inferred[-1] is True


@torch.no_grad()
def _guided(model, x, y, null, timesteps, named=True):
    """A stock two-call guidance loop: (cond, uncond) outputs per step, each call in its own cache context."""
    outputs = []
    for step, t in enumerate(timesteps):
        t = torch.full((x.shape[0],), float(t))
        pair = []
        for branch, labels in (("cond", y), ("uncond", null)):
            if named:
                with model.cache_context(branch, step_index=step):
                    pair.append(model(x, timestep=t, class_labels=labels).sample)
            else:
                pair.append(model(x, timestep=t, class_labels=labels).sample)
        outputs.append(pair)
    return outputs


@torch.no_grad()
def _alone(model, x, labels, timesteps):
    """One branch sampled by itself on a fresh hooked copy: what its own history gives."""
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=2)))
    return [model(x, timestep=torch.full((x.shape[0],), float(t)), class_labels=labels).sample for t in timesteps]


def test_cache_context_branches_keep_their_own_state_and_step_zero_starts_a_run():
    model = _cache_mixin_dit()
    x, y = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.tensor([1, 2])
    null = torch.full_like(y, 10)
    first, second = [900, 800, 700, 600], [500, 400, 300]
    references = {name: [_alone(copy.deepcopy(model), x, labels, run) for run in (first, second)]
                  for name, labels in (("cond", y), ("uncond", null))}
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=2)))
    assert isinstance(vars(model)["cache_context"], CacheContextReader)
    runs = _guided(model, x, y, null, first), _guided(model, x, y, null, second)
    assert set(_engine_of(model).policy_state.branches) == {None, "cond", "uncond"}
    for run, outputs in enumerate(runs):
        for index, name in enumerate(("cond", "uncond")):
            expected = references[name][run]
            assert all(torch.equal(pair[index], want) for pair, want in zip(outputs, expected)), (run, name)
    # Unnamed (ChromaPipeline opens no cache context), the uncond call is the second call on the very same latents at
    # the same timestep with other conditioning: the engine keeps it apart as branch "call 1".
    unnamed = _cache_mixin_dit()
    apply_early_exit(unnamed, EarlyExitConfig(policy=BlockForecast(interval=2)))
    apart = _guided(unnamed, x, y, null, first, named=False)
    assert set(_engine_of(unnamed).policy_state.branches) == {None, "call 1"}
    for index, name in enumerate(("cond", "uncond")):
        assert all(torch.equal(pair[index], want) for pair, want in zip(apart, references[name][0])), name
    remove_early_exit(model)
    assert "cache_context" not in vars(model) and model.cache_context.__func__ is CacheMixin.cache_context


def test_the_context_reader_is_copied_with_the_model_and_leaves_stock_models_alone():
    model = _cache_mixin_dit()
    apply_early_exit(model, EarlyExitConfig(policy=BlockForecast(interval=2)))
    twin = copy.deepcopy(model)
    reader = vars(twin)["cache_context"]
    assert reader is not vars(model)["cache_context"] and reader.inner.__self__ is twin
    assert _engine_of(twin).context_reader is reader
    with twin.cache_context("uncond", step_index=3):
        assert reader.current.branch == "uncond" and reader.current.step_index == 3
        assert vars(model)["cache_context"].current is None
    assert reader.current is None
    dit = tiny_dit(num_layers=2)  # no CacheMixin: its pipelines open no cache context, nothing is installed
    apply_early_exit(dit, EarlyExitConfig(policy=BlockForecast(interval=2)))
    assert "cache_context" not in vars(dit) and _engine_of(dit).context_reader is None


@torch.no_grad()
def test_a_cache_context_name_says_the_guidance_layout():
    model = _cache_mixin_dit()
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(2)))
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    pairs, t = torch.cat([x, x]), torch.full((4,), 500.0)  # [cond rows; their uncond partners]
    labels = torch.tensor([1, 2, 10, 10])
    model(pairs, timestep=t, class_labels=labels)
    assert get_exit_stats(model).cfg_paired == [True]  # no context: inferred from the inputs
    for name, paired in (("cond", False), ("uncond", False), ("cond_uncond", True), ("other", True)):
        with model.cache_context(name):
            model(pairs, timestep=t, class_labels=labels)
        assert get_exit_stats(model).cfg_paired == [paired], name
    different = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5))  # inference: no pairs
    with model.cache_context("cond_uncond"):
        model(different, timestep=t, class_labels=labels)
    assert get_exit_stats(model).cfg_paired == [True]  # the name says so

"""Exits and caches apart: each contract declares what the engine calls, and the engine never probes for more."""

import ast
import inspect
from pathlib import Path

import pytest
import torch

import ee_diffusion
from ee_diffusion import EarlyExitConfig, apply_early_exit, remove_early_exit
from ee_diffusion.caches import BlockForecast, CacheState, SubmoduleForecast, TrainingFreeCache
from ee_diffusion.policies import ExitPolicy, StaticDepth
from ee_diffusion.testing import tiny_dit

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGE = Path(ee_diffusion.__file__).parent
#: The engine and the hooks that hand it calls.
ENGINE_MODULES = [*sorted((PACKAGE / "engine").glob("*.py")), PACKAGE / "unet" / "truncation.py",
                  PACKAGE / "hooks.py", PACKAGE / "forward_chain.py"]
#: Probes that read no contract of ours, each with why it stays (file, source text of the call).
NOT_OUR_CONTRACTS = {
    # A function's code object, for torch.export's trace name; a bound method or partial has none.
    ("forward_chain.py", 'getattr(self.inner, "__code__", None)'),
}


def _probes(path: Path) -> list[str]:
    """`getattr`/`hasattr` calls and identity tests against a class's attribute (`type(x).m is Base.m`)."""
    source = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            text = ast.get_source_segment(source, node)
            if (path.name, text) not in NOT_OUR_CONTRACTS:
                found.append(f"{path.name}:{node.lineno}: {text}")
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            bases = [side.value for side in (node.left, *node.comparators) if isinstance(side, ast.Attribute)]
            if any((isinstance(base, ast.Name) and base.id[:1].isupper())
                   or (isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "type")
                   for base in bases):
                found.append(f"{path.name}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_the_engine_never_probes_for_attributes():
    assert len(ENGINE_MODULES) >= 4 and all(path.exists() for path in ENGINE_MODULES)
    found = [probe for path in ENGINE_MODULES for probe in _probes(path)]
    assert not found, f"the engine probes instead of calling a declared contract: {found}"


def test_the_probe_check_can_fail(tmp_path):
    probe = tmp_path / "engine_probe.py"
    probe.write_text("def f(policy, block):\n    a = type(policy).on_final is ExitPolicy.on_final\n"
                     "    return a or getattr(block, '_chunk_size', None) or hasattr(policy, 'x')\n")
    assert len(_probes(probe)) == 3


def _declared(cls: type) -> list[str]:
    return [name for name, value in vars(cls).items() if inspect.isfunction(value) and not name.startswith("_")]


def test_each_contract_declares_and_documents_what_the_engine_calls():
    cache_points = ("create_state", "on_decision", "on_final", "acts_after_blocks", "needs_block_hooks",
                    "start_forecast", "decides_after")
    assert set(cache_points) <= set(_declared(TrainingFreeCache))
    assert {"run", "settle", "finish"} <= set(_declared(SubmoduleForecast)) and SubmoduleForecast.pending is False
    assert TrainingFreeCache.forecasts_submodules is False and CacheState.infer_runs is True
    for cls in (ExitPolicy, TrainingFreeCache, SubmoduleForecast, CacheState):
        undocumented = [name for name in _declared(cls) if not inspect.getdoc(getattr(cls, name))]
        assert not undocumented, f"{cls.__name__} leaves {undocumented} undocumented"
    # The exit contract carries no cache extension point, and a cache's defaults never exit.
    for name in ("create_state", "on_decision", "on_final", "start_forecast", "forecasts_submodules"):
        assert not hasattr(ExitPolicy, name), name
    assert not TrainingFreeCache().decides_after(0, 4) and TrainingFreeCache().plan_depths(torch.ones(2), 4) is None


class _EveryRowComputes(TrainingFreeCache):
    """A cache with only the declared defaults but `forecasts_submodules`: counts what the engine hands it."""

    forecasts_submodules = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start_forecast(self, state, timesteps, paired, inputs_key) -> SubmoduleForecast:
        cache = self

        class Counting(SubmoduleForecast):
            def run(self, block_index, name, forward, args, kwargs):
                cache.calls.append(f"{block_index}.{name}")
                return super().run(block_index, name, forward, args, kwargs)

            def finish(self) -> None:
                cache.calls.append("finish")

        return Counting()


@torch.no_grad()
def test_a_cache_of_defaults_runs_through_its_contract_and_is_the_stock_model():
    model = tiny_dit(num_layers=2)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([900, 400]), torch.tensor([1, 2])
    stock = model(x, timestep=t, class_labels=y).sample
    cache = _EveryRowComputes()
    apply_early_exit(model, EarlyExitConfig(policy=cache))
    assert torch.equal(model(x, timestep=t, class_labels=y).sample, stock)
    assert cache.calls == ["0.attn1", "0.ff", "1.attn1", "1.ff", "finish"]
    remove_early_exit(model)


def test_exit_policies_and_caches_share_the_config_field_and_saved_configs():
    for policy in (StaticDepth(2), BlockForecast(interval=2)):
        config = EarlyExitConfig(policy=policy)
        assert EarlyExitConfig.from_json(config.to_json()) == config
    assert isinstance(EarlyExitConfig.from_dict({"policy": {"type": "BlockForecast"}}).policy, TrainingFreeCache)


def test_a_plain_object_with_cache_methods_is_told_which_base_to_subclass():
    class Plain:
        needs_certainty = False

        def exit_mask(self, ctx):
            return torch.zeros(ctx.rows.shape, dtype=torch.bool)

        def on_final(self, ctx):
            pass

    with pytest.raises(TypeError, match=r"\['on_final'\].*ee_diffusion.caches.TrainingFreeCache"):
        EarlyExitConfig(policy=Plain())

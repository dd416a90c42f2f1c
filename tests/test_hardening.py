"""Cross-cutting hardening: long runs with flat memory, repeated apply/remove, and no unpickling anywhere
(NaN/inf handling: tests/test_engine_nonfinite.py)."""

import gc
import re
from pathlib import Path

import pytest
import torch

from ee_diffusion import EarlyExitConfig, UncertaintyHeads, apply_early_exit, get_exit_stats, remove_early_exit
from ee_diffusion.hooks import _engine_of
from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit

X, T, Y = torch.randn(4, 1, 8, 8), torch.tensor([100.0, 900.0, 100.0, 900.0]), torch.tensor([1, 2, 3, 4])


@pytest.mark.slow
def test_thousands_of_calls_keep_engine_state_flat():
    model = tiny_dit(num_layers=4)
    heads = UncertaintyHeads.from_model(model)
    policies = [TimestepSchedule([500], [4, 2]), UncertaintyThreshold(0.5, patience=1), StaticDepth(3)]
    apply_early_exit(model, EarlyExitConfig(policy=policies[0]), heads=heads)
    engine = _engine_of(model)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 900.0]), torch.tensor([1, 2])

    def engine_tensors():
        return sum(isinstance(o, torch.Tensor) for o in gc.get_referents(*vars(engine).values()))

    counts = []
    with torch.no_grad():
        for i in range(300):
            engine.config = EarlyExitConfig(policy=policies[i % 3])
            model(x, timestep=t, class_labels=y)
            if i % 100 == 99:
                gc.collect()
                counts.append((len(gc.get_objects()), engine_tensors()))
    assert engine.call is None and engine.recorders == [] and get_exit_stats(model).num_calls == 1
    objects = [c[0] for c in counts]
    assert max(objects[1:]) - min(objects[1:]) < 200, objects  # no per-call growth (300 calls)
    assert len({c[1] for c in counts}) == 1
    remove_early_exit(model)


def test_apply_remove_200_times_leaks_no_hooks():
    from ee_diffusion.forward_chain import BlockCallHook, ModelCallHook

    model = tiny_dit(num_layers=2)
    reference = model(X, timestep=T, class_labels=Y).sample
    gc.collect()
    before = sum(isinstance(o, (ModelCallHook, BlockCallHook)) for o in gc.get_objects())
    for _ in range(200):
        apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(1)))
        remove_early_exit(model)
    gc.collect()
    after = sum(isinstance(o, (ModelCallHook, BlockCallHook)) for o in gc.get_objects())
    assert after == before == 0
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())
    assert torch.equal(model(X, timestep=T, class_labels=Y).sample, reference)


def test_the_package_never_unpickles():
    root = Path(__file__).resolve().parents[1] / "ee_diffusion"
    pattern = re.compile(r"\btorch\.load\(|\bpickle\b|\bload_custom_state\b|register_for_checkpointing\(")
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line) and not line.lstrip().startswith("#") and "pickled" not in line and "weights_only=True" not in line]
    assert offenders == []

"""Early exit next to everyone else's hooks on the same model: accelerate's offloading, diffusers' group
offloading and layerwise casting (applied, removed and re-applied in any order around ours), and diffusers'
FirstBlockCache (refused with a policy). Outputs are compared with the stock model carrying the same other hooks."""

from __future__ import annotations

import pytest
import torch
from _interop import PER_ROW, T, X, Y, run
from accelerate import cpu_offload, cpu_offload_with_hook
from accelerate.hooks import remove_hook_from_module
from diffusers import DDIMScheduler
from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache, apply_group_offloading

from ee_diffusion import EarlyExitConfig, apply_early_exit, remove_early_exit
from ee_diffusion.adapters import get_adapter
from ee_diffusion.hooks import early_exit, is_early_exit_applied, set_exit_config
from ee_diffusion.layout import BatchLayout
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth, TimestepSchedule
from ee_diffusion.testing import tiny_dit

CPU = torch.device("cpu")


def hand_exit(model, k):
    """Blocks 0..k-1 called by hand (through whatever hooks they carry), decoded with the model's head."""
    with torch.no_grad():
        h = model.pos_embed(X)
        for block in model.transformer_blocks[:k]:
            h = block(h, timestep=T, class_labels=Y)
        return get_adapter(model).decoder.decode(h, timestep=T, class_labels=Y)


def remove_registry_hooks(model, *names):
    from diffusers.hooks import HookRegistry

    for name in names:
        HookRegistry.check_if_exists_or_initialize(model).remove_hook(name, recurse=True)


def accelerate_hooked(model):
    return any(hasattr(m, "_hf_hook") for m in model.modules())


def registry_hooked(name):
    return lambda model: any(name in getattr(getattr(m, "_diffusers_hook", None), "hooks", {}) for m in model.modules())


# (name, apply theirs, remove theirs or None, is theirs still on the model, changes the numbers)
OTHERS = [
    ("cpu_offload", lambda m: cpu_offload(m, execution_device=CPU),
     lambda m: remove_hook_from_module(m, recurse=True), accelerate_hooked, False),
    ("cpu_offload_with_hook", lambda m: cpu_offload_with_hook(m, CPU),
     lambda m: remove_hook_from_module(m, recurse=True), accelerate_hooked, False),
    ("group_offload_block", lambda m: apply_group_offloading(m, CPU, CPU, "block_level", num_blocks_per_group=1),
     lambda m: remove_registry_hooks(m, "group_offloading", "lazy_prefetch_group_offloading"),
     registry_hooked("group_offloading"), False),
    ("group_offload_leaf", lambda m: apply_group_offloading(m, CPU, CPU, "leaf_level"),
     lambda m: remove_registry_hooks(m, "group_offloading", "lazy_prefetch_group_offloading",
                                     "layer_execution_tracker"),
     registry_hooked("group_offloading"), False),
    # diffusers cannot undo layerwise casting (the weights stay in fp8): only our removal is tested.
    ("layerwise_casting_fp8", lambda m: m.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn,
                                                                   compute_dtype=torch.float32),
     None, registry_hooked("layerwise_casting"), True),
]
IDS = [o[0] for o in OTHERS]


@pytest.fixture(scope="module")
def reference():
    """Outputs of the plain model: stock, and early exit alone with the per-row schedule."""
    model = tiny_dit(num_layers=4)
    stock = run(model)
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    return stock, run(model)


def check_ours(hooked, twin, numeric, reference):
    """`hooked` carries theirs and ours; `twin` the same weights with theirs only."""
    set_exit_config(hooked, EarlyExitConfig())
    assert torch.equal(run(hooked), run(twin))  # no policy: exactly the stock model with their hooks
    set_exit_config(hooked, EarlyExitConfig(policy=StaticDepth(2)))
    assert torch.equal(run(hooked), hand_exit(twin, 2))  # exit == decode of the exit block, through their hooks
    set_exit_config(hooked, EarlyExitConfig(policy=PER_ROW))
    if not numeric:
        assert torch.equal(run(hooked), reference[1])


@pytest.mark.parametrize("other", OTHERS, ids=IDS)
@pytest.mark.parametrize("order", ["theirs_first", "ours_first"])
def test_any_order_and_removal(other, order, reference):
    _, apply_theirs, remove_theirs, theirs_on, numeric = other
    model, twin = tiny_dit(num_layers=4), tiny_dit(num_layers=4)
    apply_theirs(twin)
    if order == "theirs_first":
        apply_theirs(model)
        apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    else:
        apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
        apply_theirs(model)
    check_ours(model, twin, numeric, reference)

    # removing ours leaves theirs in place and working
    remove_early_exit(model)
    assert theirs_on(model) and not is_early_exit_applied(model)
    assert torch.equal(run(model), run(twin))

    # ours again, then theirs removed: ours keeps working, and removing ours too gives the stock model
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    if remove_theirs is None:
        return
    remove_theirs(model)
    assert not theirs_on(model) and is_early_exit_applied(model)
    assert torch.equal(run(model), reference[1])
    remove_early_exit(model)
    assert torch.equal(run(model), reference[0])
    assert all("forward" not in vars(m) for m in (model, *model.transformer_blocks))


@pytest.mark.parametrize("other", [o for o in OTHERS if o[2] is not None], ids=[o[0] for o in OTHERS if o[2]])
@pytest.mark.parametrize("order", ["theirs_first", "ours_first"])
def test_theirs_removed_and_reapplied_around_ours(other, order, reference):
    """What a LoRA load does to group offloading (diffusers removes and re-applies its hooks), and
    `enable_model_cpu_offload` to accelerate's hook after every pipeline call: ours stays in place and exact.
    Removing a hook drops whatever was stacked on it since, so this needs ours below theirs."""
    _, apply_theirs, remove_theirs, theirs_on, _ = other
    model, twin = tiny_dit(num_layers=4), tiny_dit(num_layers=4)
    apply_theirs(twin)
    if order == "theirs_first":
        apply_theirs(model)
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    if order == "ours_first":
        apply_theirs(model)
    remove_theirs(model)
    apply_theirs(model)
    assert theirs_on(model) and torch.equal(run(model), reference[1])
    remove_early_exit(model)
    assert theirs_on(model) and torch.equal(run(model), run(twin))


def test_pipeline_model_cpu_offload_with_exits_per_call(reference):
    """`enable_model_cpu_offload` (on CPU) and exits that the pipeline applies and removes around every call."""
    pipes = [EarlyExitDiTPipeline(transformer=tiny_dit(num_layers=4), scheduler=DDIMScheduler()) for _ in range(2)]
    pipes[0].enable_model_cpu_offload(device="cpu")
    config = EarlyExitConfig(policy=PER_ROW)
    images = [
        pipe(class_labels=[1, 7], num_inference_steps=3, exit_config=config, generator=torch.Generator().manual_seed(0),
             output_type="np").images
        for pipe in pipes
    ]
    assert (images[0] == images[1]).all()
    transformer = pipes[0].transformer
    assert hasattr(transformer, "_hf_hook") and not is_early_exit_applied(transformer)  # theirs stays, ours left
    pipes[0].remove_all_hooks()
    assert not hasattr(transformer, "_hf_hook")
    assert torch.equal(run(transformer), reference[0])


def test_first_block_cache_is_refused_with_a_policy(reference):
    model = tiny_dit(num_layers=4)
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(ValueError, match="FirstBlockCache"):
        apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    assert not is_early_exit_applied(model)
    apply_early_exit(model, EarlyExitConfig())  # without a policy the two compose (ours passes through)
    with pytest.raises(ValueError, match="FirstBlockCache"):
        set_exit_config(model, EarlyExitConfig(policy=PER_ROW))
    remove_early_exit(model)

    # FirstBlockCache applied after a policy: the call is refused
    model = tiny_dit(num_layers=4)
    apply_early_exit(model, EarlyExitConfig(policy=PER_ROW))
    apply_first_block_cache(model, FirstBlockCacheConfig(threshold=0.05))
    with pytest.raises(ValueError, match="FirstBlockCache"):
        run(model)
    remove_registry_hooks(model, "fbc_leader_block_hook", "fbc_block_hook")
    assert torch.equal(run(model), reference[1])


def test_early_exit_context_inside_other_hooks(reference):
    """The context manager applies and removes ours under accelerate's hook, leaving it in place."""
    model = tiny_dit(num_layers=4)
    cpu_offload(model, execution_device=CPU)
    with early_exit(model, EarlyExitConfig(policy=PER_ROW), layout=BatchLayout()):
        assert torch.equal(run(model), reference[1])
    assert accelerate_hooked(model) and not is_early_exit_applied(model)
    remove_hook_from_module(model, recurse=True)
    assert torch.equal(run(model), reference[0])


def test_unet_gradient_checkpointing_with_per_row_exits():
    """U-Net blocks checkpoint inside themselves (below our hooks): gradients equal those without checkpointing."""
    from ee_diffusion.testing import random_bridges, tiny_unet

    grads = []
    for checkpointing in (False, True):
        model = tiny_unet().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        bridges = random_bridges(model)
        apply_early_exit(model, EarlyExitConfig(policy=TimestepSchedule([500], [2, 1])), bridges=bridges)
        x = torch.randn(2, model.config.in_channels, model.config.sample_size, model.config.sample_size,
                        generator=torch.Generator().manual_seed(0))
        model(x, torch.tensor([100, 900])).sample.square().sum().backward()
        grads.append([p.grad for p in (*model.parameters(), *bridges.parameters())])
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)

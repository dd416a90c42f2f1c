"""Family declarations: validated data, clear refusals, and the engine's view built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DiTTransformer2DModel

import ee_diffusion.families as families
from ee_diffusion.adapters import get_adapter, supported_model_classes
from ee_diffusion.config import EarlyExitConfig
from ee_diffusion.hooks import apply_early_exit, get_exit_stats
from ee_diffusion.families import DIT, FAMILIES, BlockStack, FamilyAdapter, ModelFamily
from ee_diffusion.schedules import StaticDepth
from ee_diffusion.testing import (
    flux_inputs, tiny_chroma, tiny_cogvideox, tiny_cogview4, tiny_dit, tiny_flux, tiny_hidream, tiny_hunyuandit,
    tiny_hunyuanvideo, tiny_ltx, tiny_pixart, tiny_qwenimage, tiny_sana, tiny_sd3, tiny_wan,
)


def test_every_shipped_declaration_is_short():
    """A family is a declaration: each fits in 40 lines (decoders live in decoders/)."""
    root = Path(families.__file__).parent
    machinery = ("__init__", "spec", "base", "decoder", "adapter", "support", "forecast_steps")
    declarations = sorted(set(root.glob("*.py")) - {root / f"{name}.py" for name in machinery})
    assert len(declarations) == len(FAMILIES)
    for path in declarations:
        assert len(path.read_text().splitlines()) <= 40, path.name


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attr=""), "attr must name"),
        (dict(attr="blocks", returns=("text",)), "returns must list 'image'"),
        (dict(attr="blocks", returns=("image", "image")), "returns must list 'image'"),
        (dict(attr="blocks", returns=("image", "video")), "returns must list 'image'"),
        (dict(attr="blocks", returns=("text", "image")), "needs text_arg"),
        (dict(attr="blocks", text_arg="encoder_hidden_states"), "needs text_arg"),
        (dict(attr="blocks", row_args=["temb"]), "row_args must be a tuple"),
        (dict(attr="blocks", row_args=("hidden_states",)), "row_args lists the image or text stream"),
        (dict(attr="blocks", joint=1), "joint must be True or False"),
        (dict(attr="blocks", forecast_step="attn1"), r"forecast_step must be a function \(block, inputs, forecasts, "
                                                     r"memo\) or None, got 'attn1'"),
        (dict(attr="blocks", joint=True, returns=("text", "image"), text_arg="encoder_hidden_states"),
         "a joint stack carries no separate text stream"),
    ],
)
def test_a_bad_block_stack_is_refused(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        BlockStack(**kwargs)


def test_a_bad_family_is_refused():
    stack = BlockStack("transformer_blocks")
    with pytest.raises(TypeError, match="model_classes"):
        ModelFamily("x", model_classes=(), stacks=(stack,))
    with pytest.raises(TypeError, match="stacks"):
        ModelFamily("x", model_classes=(DiTTransformer2DModel,), stacks=())
    with pytest.raises(ValueError, match="timestep_scale"):
        ModelFamily("x", model_classes=(DiTTransformer2DModel,), stacks=(stack,), timestep_scale=0)
    with pytest.raises(ValueError, match="null_class"):
        ModelFamily("x", model_classes=(DiTTransformer2DModel,), stacks=(stack,), null_class=("class_labels",))
    with pytest.raises(ValueError, match="cannot be joint"):
        ModelFamily("x", model_classes=(DiTTransformer2DModel,), stacks=(BlockStack("blocks", joint=True),))


def test_a_declaration_that_does_not_fit_the_model_is_refused():
    model = tiny_dit(num_layers=2)
    wrong_attr = ModelFamily("x", model_classes=(DiTTransformer2DModel,), stacks=(BlockStack("blocks"),))
    with pytest.raises(TypeError, match="declares blocks at `blocks`"):
        FamilyAdapter(model, wrong_attr)
    wrong_image = ModelFamily(
        "x", model_classes=(DiTTransformer2DModel,), stacks=(BlockStack("transformer_blocks", image_arg="x"),)
    )
    with pytest.raises(TypeError, match="must be the first parameter"):
        FamilyAdapter(model, wrong_image)


@pytest.mark.parametrize("make, match", [
    (lambda: tiny_dit(num_layers=0), r"DiTTransformer2DModel has no blocks: `transformer_blocks` .* is empty"),
    (lambda: tiny_flux(num_layers=0, num_single_layers=0),
     r"FluxTransformer2DModel has no blocks: `transformer_blocks` and `single_transformer_blocks` .* are empty"),
])
def test_a_model_without_blocks_is_refused_by_name(make, match):
    """An empty block stack is refused where the adapter is built, naming the class and the empty attribute (not an
    IndexError from the first block the engine or the model reaches)."""
    model = make()
    with pytest.raises(ValueError, match=match):
        get_adapter(model)
    with pytest.raises(ValueError, match=match):
        apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(1)))


def test_a_partly_empty_model_runs_on_its_other_stack():
    """One empty stack of two is no error: Flux without single-stream blocks exits among its double-stream ones."""
    model = tiny_flux(num_layers=2, num_single_layers=0)
    assert get_adapter(model).num_blocks == 2
    inputs = flux_inputs(model, batch=2)
    with torch.no_grad():
        stock = model(**inputs).sample
        apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(1)))
        assert not torch.equal(model(**inputs).sample, stock)
    assert get_exit_stats(model).blocks_run[0].tolist() == [1, 1]


def test_a_family_without_a_decoder_still_exits_but_cannot_decode():
    """Inference exits need no decoder (the model's own head decodes parked rows); heads and training do."""
    model = tiny_dit(num_layers=3)
    bare = FamilyAdapter(model, ModelFamily("bare", model_classes=DIT.model_classes, stacks=DIT.stacks))
    with pytest.raises(ValueError, match="declares no exit decoder"):
        bare.decoder
    apply_early_exit(model, EarlyExitConfig(policy=StaticDepth(2)))
    model(torch.randn(2, 1, 8, 8), timestep=torch.tensor([1, 2]), class_labels=torch.tensor([0, 1]))
    assert get_exit_stats(model).blocks_run[0].tolist() == [2, 2]


@pytest.mark.parametrize("make, name", [(tiny_dit, "DiT"), (tiny_pixart, "PixArt"), (tiny_sd3, "SD3"),
                                        (tiny_flux, "Flux"), (tiny_qwenimage, "Qwen-Image"), (tiny_wan, "Wan"),
                                        (tiny_sana, "Sana"), (tiny_cogview4, "CogView4"),
                                        (tiny_cogvideox, "CogVideoX"),
                                        (tiny_hunyuanvideo, "HunyuanVideo"),
                                        (tiny_chroma, "Chroma"), (tiny_ltx, "LTX-Video"),
                                        (tiny_hunyuandit, "HunyuanDiT"), (tiny_hidream, "HiDream")])
def test_each_family_is_found_for_its_model(make, name):
    assert get_adapter(make()).family.name == name


def test_every_family_is_named_in_the_refusal_of_an_unsupported_model():
    with pytest.raises(TypeError) as error:
        get_adapter(torch.nn.Linear(2, 2))
    for family in FAMILIES:
        for cls in family.model_classes:
            assert cls.__name__ in str(error.value)
    assert "UNet2DModel" in supported_model_classes()
    assert "add-a-family" in str(error.value)


def test_the_add_a_family_page_runs(capsys):
    """Every ```python block of docs/add-a-family.md runs, in order, in one namespace, as the page promises."""
    import re

    text = (Path(__file__).parent.parent / "docs" / "add-a-family.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/add-a-family.md", "exec"), namespace)
    assert capsys.readouterr().out.splitlines()[-1] == "[3, 3]"


def test_the_readmes_families_table_is_the_one_the_declarations_render():
    from ee_diffusion.families.support import support_table

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start, end = "<!-- families table: generated -->\n", "\n<!-- end of families table -->"
    assert readme[readme.index(start) + len(start) : readme.index(end)] == support_table(FAMILIES)


def test_every_declared_family_has_its_property_suite_and_cache_tests():
    """The table claims exits and caches for every family: each must have its suite file and its cache tests."""
    import test_family_caches

    tests = Path(__file__).parent
    for family in FAMILIES:
        module = next(path.stem for path in (Path(families.__file__).parent).glob("*.py")
                      if f"name=\"{family.name}\"" in path.read_text())
        assert (tests / f"test_backbone_{module}.py").exists(), family.name
        assert family.name in test_family_caches.FAMILIES, family.name

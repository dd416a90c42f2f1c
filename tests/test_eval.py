"""Evaluation: FID/KID properties, seeded sampling, diffusers' caches as baselines."""

import copy

import pytest
import torch

from ee_diffusion import EarlyExitConfig
from ee_diffusion.eval.baselines import TAYLORSEER_DIT_MODULES, CacheBaseline, diffusers_cache
from ee_diffusion.eval.features import load_feature_net
from ee_diffusion.eval.quality import QualityEvaluator, real_images
from ee_diffusion.eval.pipeline_sampling import image_generators
from ee_diffusion.schedules import StaticDepth, UncertaintyThreshold
from _eval_pipes import assert_caches_skip_work_and_leave_the_model_exact, sample_classes, tiny_dit_pipeline


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def evaluator():
    real, _ = real_images("digits", "reference")
    return QualityEvaluator(load_feature_net("digits"), real[:400])


@pytest.fixture(scope="module")
def floor_set():
    images, labels = real_images("digits", "floor")
    return images[:400], labels[:400]


def test_fid_of_a_set_with_itself_is_zero(evaluator):
    real, labels = real_images("digits", "reference")
    score = evaluator.score(real[:400], labels[:400])
    assert score["fid"] == pytest.approx(0.0, abs=1e-3)
    assert score["accuracy"] > 0.95


def corrupt(images, level, seed=0):
    """Images in [0, 1] blended towards uniform noise and blurred by `level` in [0, 1] (0 = unchanged)."""
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(seed))
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    return ((1 - level) * images + level * (0.5 * blurred + 0.5 * noise)).clamp(0, 1)


def test_fid_grows_monotonically_with_corruption(evaluator, floor_set):
    images, labels = floor_set
    fids = [evaluator.score(corrupt(images, level), labels, kid=False)["fid"] for level in (0.0, 0.15, 0.3, 0.6)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    kids = [evaluator.kid(corrupt(images, level))["kid_mean"] for level in (0.0, 0.6)]
    assert kids[0] < kids[1]


def test_a_saved_feature_net_loads_back_and_leaves_no_temporary_files(tmp_path):
    from ee_diffusion.eval.features import save_feature_net

    net = load_feature_net("digits")
    save_feature_net(net, net.meta, tmp_path / "copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.json", "copy.safetensors"]
    again = load_feature_net(tmp_path / "copy")
    images = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(again(images), net(images), rtol=0, atol=0)
    assert again.meta == net.meta


def test_shipped_feature_nets_are_small_and_accurate():
    for name in ("digits", "digits-pool"):
        assert load_feature_net(name).meta["held_out_accuracy"] >= 0.95
    from ee_diffusion.eval.features import FEATURE_NET_DIR

    assert all(f.stat().st_size < 2 * 2**20 for f in FEATURE_NET_DIR.iterdir())


def test_images_do_not_depend_on_batching():
    pipe = tiny_dit_pipeline()
    one = sample_classes(pipe, range(5), num_inference_steps=3, batch_size=5)
    split = sample_classes(pipe, range(5), num_inference_steps=3, batch_size=2)
    tail = sample_classes(pipe, [3, 4], num_inference_steps=3)
    torch.testing.assert_close(one.images, split.images, rtol=0, atol=2e-4)
    torch.testing.assert_close(one.images[3:], tail.images, rtol=0, atol=2e-4)
    assert one.labels.tolist() == [0, 1, 2, 3, 4]


def _first_model_inputs(transformer):
    """Record the input of the first model call of every pipeline call (the initial noise, for DDIM), in order."""
    seen = []

    def record(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        seen.append((float(torch.as_tensor(timestep).flatten()[0]), hidden.detach().clone()))

    handle = transformer.register_forward_pre_hook(record, with_kwargs=True)

    def first_calls():
        handle.remove()
        first_t = max(t for t, _ in seen)  # DDIM's first step has the largest timestep
        return torch.cat([hidden for t, hidden in seen if t == first_t])

    return first_calls


def test_every_method_sees_the_same_noise():
    """Whatever the method, batch size or guidance, image i starts from the noise of its own generator."""
    pipe = tiny_dit_pipeline(heads=True)
    # A copy whose transformer is a deep copy (same weights), so the cache hooks never touch `pipe`.
    fbc = copy.copy(pipe)
    fbc.transformer = copy.deepcopy(pipe.transformer)
    indices = [0, 1, 2, 3, 4]
    methods = {
        "full": dict(),
        "static": dict(exit_config=EarlyExitConfig(policy=StaticDepth(2)), batch_size=2),
        "deediff": dict(exit_config=EarlyExitConfig(policy=UncertaintyThreshold(0.5, patience=1)), batch_size=3),
        "guided": dict(guidance_scale=4.0),
    }
    expected = torch.stack([torch.randn(1, 8, 8, generator=g) for g in image_generators(indices, seed=0)])
    for name, kwargs in methods.items():
        stop = _first_model_inputs(pipe.transformer)
        sample_classes(pipe, indices, num_inference_steps=3, **{"guidance_scale": 1.0, **kwargs})
        first = stop()
        if name == "guided":  # the model sees every row twice: conditional, then unconditional
            first = first[: len(indices)]
        torch.testing.assert_close(first, expected, rtol=0, atol=0, msg=name)
    stop = _first_model_inputs(fbc.transformer)
    cache = CacheBaseline("first_block_cache", {"threshold": 0.5})
    sample_classes(fbc, indices, num_inference_steps=3, guidance_scale=1.0,
             call_wrapper=lambda: diffusers_cache(fbc.transformer, cache, fbc.scheduler, 3))
    torch.testing.assert_close(stop(), expected, rtol=0, atol=0)
    # Another seed is another noise.
    stop = _first_model_inputs(pipe.transformer)
    sample_classes(pipe, indices, num_inference_steps=3, guidance_scale=1.0, seed=1)
    assert not torch.equal(stop(), expected)


def _caches():
    """One setting of each diffusers cache `bench --pipeline` offers that skips work on the tiny model."""
    return [CacheBaseline("first_block_cache", {"threshold": 5.0}),
            CacheBaseline("taylorseer_cache", {"cache_interval": 2, "disable_cache_before_step": 1,
                                               "cache_identifiers": TAYLORSEER_DIT_MODULES}),
            CacheBaseline("sea_cache", {"threshold": 10.0, "retention_steps": 1})]


def test_each_diffusers_cache_attaches_skips_work_and_leaves_the_model_exact():
    pipe = tiny_dit_pipeline()
    steps = 6
    assert_caches_skip_work_and_leave_the_model_exact(pipe, _caches(), steps)


def test_an_unknown_cache_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown diffusers cache 'tea_cache'; known: \['first_block_cache'"):
        CacheBaseline("tea_cache")

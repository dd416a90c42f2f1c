"""Evaluation: FID/KID properties, seeded sampling, FLOPs, FirstBlockCache baseline, the bench run."""

import json

import pytest
import torch
from diffusers import DDIMScheduler

from ee_diffusion import EarlyExitConfig, UncertaintyHeads
from ee_diffusion.eval.baselines import fbc_pipeline, first_block_cache
from ee_diffusion.eval.compute import count_flops
from ee_diffusion.eval.features import load_feature_net, train_feature_net
from ee_diffusion.eval.quality import QualityEvaluator, balanced_subset, corrupt, real_images
from ee_diffusion.eval.sampling import generate, image_generators
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth, UncertaintyThreshold
from ee_diffusion.testing import tiny_dit


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def evaluator():
    real, _ = real_images("digits", "reference")
    return QualityEvaluator(load_feature_net("digits"), real[:400])


@pytest.fixture(scope="module")
def floor_set():
    images, labels = real_images("digits", "floor")
    return images[:400], labels[:400]


def _pipe(num_layers=4, heads=False):
    model = tiny_dit(num_layers=num_layers)
    pipe = EarlyExitDiTPipeline(transformer=model, scheduler=DDIMScheduler(),
                                exit_heads=UncertaintyHeads.from_model(model) if heads else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_fid_of_a_set_with_itself_is_zero(evaluator):
    real, labels = real_images("digits", "reference")
    score = evaluator.score(real[:400], labels[:400])
    assert score["fid"] == pytest.approx(0.0, abs=1e-3)
    assert score["accuracy"] > 0.95


def test_fid_grows_monotonically_with_corruption(evaluator, floor_set):
    images, labels = floor_set
    fids = [evaluator.score(corrupt(images, level), labels, kid=False)["fid"] for level in (0.0, 0.15, 0.3, 0.6)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    kids = [evaluator.kid(corrupt(images, level))["kid_mean"] for level in (0.0, 0.6)]
    assert kids[0] < kids[1]


def test_feature_net_training_is_deterministic():
    a, meta_a = train_feature_net("digits", steps=15)
    b, meta_b = train_feature_net("digits", steps=15)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert meta_a == meta_b  # the held-out accuracy too
    c, _ = train_feature_net("digits", steps=15, seed=1)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


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
    for name, minimum in (("digits", 0.95), ("glyphs", 0.85)):
        net = load_feature_net(name)
        assert net.meta["held_out_accuracy"] >= minimum
    from ee_diffusion.eval.features import FEATURE_NET_DIR

    assert all(f.stat().st_size < 2 * 2**20 for f in FEATURE_NET_DIR.iterdir())


def test_images_do_not_depend_on_batching():
    pipe = _pipe()
    one = generate(pipe, range(5), num_inference_steps=3, batch_size=5)
    split = generate(pipe, range(5), num_inference_steps=3, batch_size=2)
    tail = generate(pipe, [3, 4], num_inference_steps=3)
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
    pipe = _pipe(heads=True)
    fbc = fbc_pipeline(pipe)
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
        generate(pipe, indices, num_inference_steps=3, **{"guidance_scale": 1.0, **kwargs})
        first = stop()
        if name == "guided":  # the model sees every row twice: conditional, then unconditional
            first = first[: len(indices)]
        torch.testing.assert_close(first, expected, rtol=0, atol=0, msg=name)
    stop = _first_model_inputs(fbc.transformer)
    generate(fbc, indices, num_inference_steps=3, guidance_scale=1.0,
             call_wrapper=lambda: first_block_cache(fbc.transformer, 0.5))
    torch.testing.assert_close(stop(), expected, rtol=0, atol=0)
    # Another seed is another noise.
    stop = _first_model_inputs(pipe.transformer)
    generate(pipe, indices, num_inference_steps=3, guidance_scale=1.0, seed=1)
    assert not torch.equal(stop(), expected)


def test_flops_count_blocks_heads_and_shrink_with_exits():
    pipe = _pipe(heads=True)
    call = lambda config: count_flops(lambda: generate(pipe, range(2), num_inference_steps=2, exit_config=config))
    full = call(None)
    half = call(EarlyExitConfig(policy=StaticDepth(2)))
    heads = call(EarlyExitConfig(policy=UncertaintyThreshold(0.999, patience=1)))
    assert full["heads"] == 0 and heads["heads"] > 0
    assert half["total"] < full["total"] < heads["total"]


def test_first_block_cache_runs_on_a_copy_and_skips_blocks():
    pipe = _pipe()
    reference = generate(pipe, range(3), num_inference_steps=6)
    fbc = fbc_pipeline(pipe)
    cached = generate(fbc, range(3), num_inference_steps=6, call_wrapper=lambda: first_block_cache(fbc.transformer, 5.0))
    assert cached.block_evals < reference.block_evals
    # The original pipeline is untouched, and the copy is clean again after the call.
    again = generate(pipe, range(3), num_inference_steps=6)
    torch.testing.assert_close(again.images, reference.images, rtol=0, atol=0)
    plain = generate(fbc, range(3), num_inference_steps=6)
    torch.testing.assert_close(plain.images, reference.images, rtol=1e-6, atol=1e-6)


def test_bench_writes_report_with_loadable_exit_configs(tmp_path):
    from ee_diffusion.benchmarks.bench import Preset, run

    pipe = _pipe(num_layers=4, heads=True)
    pipe.save_pretrained(tmp_path / "model")
    preset = Preset(num_images=10, steps=3, extra_seeds=1, fewer_steps=(2,), thresholds=(0.5,), budgets=(0.5,),
                    threshold_budgets=(0.6,), fbc_thresholds=(0.5,), calib_images=4, calib_buckets=2,
                    calib_depths=(2,), timing_batch=2, timing_repeats=1, timing_warmup=0, flops_images=1,
                    sample_batch=10, combined=((2, 0.9),), overhead_repeats=1,
                    threshold_fractions=(0.6,))
    report = run(preset, tmp_path / "out", model_paths={"digits": str(tmp_path / "model")}, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pareto.png", "report.json", "report.md"]
    assert (tmp_path / "out" / "pareto.png").read_bytes().startswith(b"\x89PNG")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    methods = data["settings"][0]["methods"]
    families = {m["family"] for m in methods.values()}
    assert {"full", "fewer_steps", "static_depth", "ase", "deediff", "calibrated_schedule", "calibrated_thresholds",
            "distilled", "first_block_cache", "calibrated_steps"} <= families
    for method in methods.values():
        EarlyExitConfig.from_dict(method["exit_config"])  # every config loads back
    # The floor is the FID of the class-balanced real floor set against the reference set, as computed here
    # directly; the random model's samples are far worse.
    entry = report["settings"][0]
    reference, _ = real_images("digits", "reference")
    floor_images, floor_labels = real_images("digits", "floor")
    floor, _ = balanced_subset(floor_images, floor_labels, 10, 10)
    direct = QualityEvaluator(load_feature_net("digits"), reference).score(floor, kid=False)["fid"]
    assert entry["floor_fid"] == pytest.approx(direct, rel=1e-6)
    assert methods["full"]["fid"] > 3 * entry["floor_fid"]
    assert entry["seed_spread"] == pytest.approx(abs(methods["full"]["fid"] - methods["full_seed1"]["fid"]))
    assert data["settings"][0]["recommended"] == entry["recommended"]
    assert "| full |" in (tmp_path / "out" / "report.md").read_text()
    assert "full_depth_clearly_better_than_half" in entry["targets"]


def test_gpu_check_runs_small_shapes_on_cpu(tmp_path):
    from ee_diffusion.benchmarks.gpu_check import run

    report = run(tmp_path, small=True, steps=2, repeats=1, warmup=0)
    methods = report["results"]["2"]["methods"]
    assert {"full", "hooks_off", "ase_released", "static_2", "half_rows_exit_2", "half_rows_exit_2_dynamic"} <= set(methods)
    assert all(m["median_s"] > 0 for m in methods.values()) and methods["full"]["ratio_to_reference"] == 1.0
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
    assert report["ideal_ratios"]["static_2"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["gpu_check.json"]

"""Evaluation: FID/KID properties, seeded sampling, FLOPs, FirstBlockCache baseline, the bench run."""

import json

import pytest
import torch
from diffusers import DDIMScheduler

from ee_diffusion import EarlyExitConfig, UncertaintyHeads
from ee_diffusion.eval.baselines import CacheBaseline, calibrate_mag_ratios, diffusers_cache, fbc_pipeline
from ee_diffusion.eval.compute import count_flops
from ee_diffusion.eval.features import load_feature_net, train_feature_net
from ee_diffusion.eval.quality import QualityEvaluator, corrupt, real_images
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
    cache = CacheBaseline("first_block_cache", {"threshold": 0.5})
    generate(fbc, indices, num_inference_steps=3, guidance_scale=1.0,
             call_wrapper=lambda: diffusers_cache(fbc.transformer, cache, fbc.scheduler, 3))
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


def _caches(pipe, steps):
    """One setting of each diffusers cache that skips work on the tiny model (MagCache calibrated on it)."""
    ratios = calibrate_mag_ratios(lambda: generate(pipe, range(10, 12), num_inference_steps=steps),
                                  pipe.transformer, pipe.scheduler, steps)
    assert len(ratios) == steps and ratios[0] == 1.0
    return [CacheBaseline("first_block_cache", {"threshold": 5.0}),
            CacheBaseline("taylorseer_cache", {"cache_interval": 2, "disable_cache_before_step": 1,
                                               "cache_identifiers": [r"transformer_blocks\.\d+\.attn1",
                                                                     r"transformer_blocks\.\d+\.ff"]}),
            CacheBaseline("mag_cache", {"threshold": 10.0, "mag_ratios": ratios, "retention_ratio": 0.0}),
            CacheBaseline("sea_cache", {"threshold": 10.0, "retention_steps": 1})]


def test_each_diffusers_cache_attaches_skips_work_and_leaves_the_model_exact():
    pipe = _pipe()
    steps = 6
    reference = generate(pipe, range(3), num_inference_steps=steps)
    for cache in _caches(pipe, steps):
        wrapper = lambda cache=cache: diffusers_cache(pipe.transformer, cache, pipe.scheduler, steps)
        cached = generate(pipe, range(3), num_inference_steps=steps, call_wrapper=wrapper)
        assert cached.block_evals < reference.block_evals, cache.kind
        assert not torch.equal(cached.images, reference.images), cache.kind
        # Every hook is gone again: the stock model, bit for bit.
        assert not any(getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.hooks
                       for m in pipe.transformer.modules()), cache.kind
        again = generate(pipe, range(3), num_inference_steps=steps)
        torch.testing.assert_close(again.images, reference.images, rtol=0, atol=0, msg=cache.kind)


def test_an_unknown_cache_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown diffusers cache 'tea_cache'; known: \['first_block_cache'"):
        CacheBaseline("tea_cache")


def test_bench_writes_report_with_loadable_exit_configs(tmp_path):
    from ee_diffusion.benchmarks.bench import Preset, run
    from ee_diffusion.operating_point import OperatingPoint

    pipe = _pipe(num_layers=4, heads=True)
    pipe.save_pretrained(tmp_path / "model")
    preset = Preset(num_images=10, reference_steps=3, extra_seeds=1, frontier=(("ddim", (2,)), ("dpmpp", (2,))),
                    grid=(("ddim", 3), ("dpmpp", 2)), cache_grid=(("ddim", 3),), static_fractions=(0.5,),
                    threshold_fractions=(0.6,), budgets=(0.5,), threshold_budgets=(0.6,), distil=True,
                    tail_thresholds=(0.1,), fbc_thresholds=(0.5,), taylorseer_intervals=(2,), mag_thresholds=(0.1,),
                    sea_thresholds=(0.2,), calib_images=4, calib_buckets=2, calib_fractions=(0.5,), timing_batches=(4, 2),
                    timing_repeats=1, timing_warmup=0, flops_images=1, sample_batch=10, bootstrap=20,
                    overhead_repeats=1)
    report = run(preset, tmp_path / "out", model_paths={"digits": str(tmp_path / "model")}, progress=False)
    # The report files, and the images of every method as shards (a rerun of the same OUT resumes from them).
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pareto.png", "report.json", "report.md", "samples"]
    assert any((tmp_path / "out" / "samples" / "digits").rglob("shard-*.safetensors"))
    assert (tmp_path / "out" / "pareto.png").read_bytes().startswith(b"\x89PNG")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    entry = data["settings"][0]
    rows = entry["rows"]
    families = {r["family"] for r in rows.values()}
    assert {"reference", "seed", "fewer_steps", "static_depth", "ase", "deediff", "calibrated_schedule",
            "calibrated_thresholds", "distilled", "tail_cache", "first_block_cache", "taylorseer_cache", "mag_cache",
            "sea_cache"} <= families, entry["not_attached"]
    assert {r["solver"] for r in rows.values()} == {"ddim", "dpmpp"}
    for row in rows.values():
        if row["exit_config"] is not None:
            EarlyExitConfig.from_dict(row["exit_config"])  # every config loads back
        assert len(row["fid_resamples"]) == 20 and "dfid_reference" in row and "psnr_db" in row["fidelity"]
        # Scored under both shipped digits nets; quality must hold under each of them.
        assert sorted(row["fid_by_net"]) == sorted(row["dfid_reference_by_net"]) == ["net-digits", "net-digits-pool"]
        assert row["holds_quality"] == all(d["low"] <= 0 or d["high"] < 0.1 * rows["ddim3"]["fid_by_net"][net]
                                           for net, d in row["dfid_reference_by_net"].items())
        if row["family"] != "seed":
            assert row["timing"]["4"]["rounds"] == 1
    # The floor against torchmetrics' FID (an independent implementation) on the same two real sets, as uint8
    # images hold them (the generated images are scored so too).
    as_saved = lambda x: (x.clamp(0, 1) * 255).round() / 255  # noqa: E731
    reference, _ = real_images("digits", "reference")
    floor_images, _ = real_images("digits", "floor")
    direct = QualityEvaluator(load_feature_net("digits"), as_saved(reference)).score(as_saved(floor_images), kid=False)["fid"]
    assert entry["floor"]["fid"] == pytest.approx(direct, rel=1e-6)
    assert rows["ddim3"]["fid"] > 3 * entry["floor"]["fid"]  # a random model
    assert entry["seed_spread"] == pytest.approx(abs(rows["ddim3"]["fid"] - rows["ddim3_seed1"]["fid"]))
    assert entry["decisions"]["recommended"] in rows and report["settings"][0]["decisions"] == entry["decisions"]
    OperatingPoint.from_dict(entry["operating_point"])
    assert "**Verdict.**" in (tmp_path / "out" / "report.md").read_text()

GPU_CHECK_PARTS = ["timings dit-xl-2", "timings pixart-alpha-512", "timings sd3-medium-512",
                   "compile dit-xl-2 static_half", "compile dit-xl-2 per_row_schedule",
                   "attention dit-xl-2", "attention pixart-alpha-512", "attention sd3-medium-512"]


def test_gpu_check_runs_every_part_on_small_shapes_on_cpu(tmp_path):
    from ee_diffusion.benchmarks.gpu_check import run
    from ee_diffusion.benchmarks.gpu_report import markdown

    report = run(tmp_path, small=True, repeats=1, warmup=0)
    status = {p["part"]: p["status"] for p in report["parts"]}
    assert list(status) == GPU_CHECK_PARTS
    assert all(status[p] == "ran" for p in GPU_CHECK_PARTS[:5]), report["parts"]
    assert set(report["timings"]) == {"dit-xl-2", "pixart-alpha-512", "sd3-medium-512"}
    for shape in report["timings"].values():
        methods = shape["batches"]["2"]["results"]
        assert {"full", "hooks_off", "heads_no_exit", "static_half", "ase_t900"} <= set(methods)
        assert all(m["median_s"] > 0 for m in methods.values()) and methods["full"]["ratio_to_reference"] == 1.0
    compiled = report["compile"]["dit-xl-2"]
    assert compiled["backend"] == "aot_eager"
    for policy in ("static_half", "per_row_schedule"):
        # planned policies with a declared layout: one graph, equal to eager
        assert compiled[policy]["graph_breaks"] == 0 and compiled[policy]["relative_max_difference"] < 1e-5
    # No CUDA here, so no xformers kernels: the attention parts are skipped and say why, never dropped.
    for part in report["parts"][5:]:
        assert part["status"] == "skipped" and "xformers" in part["reason"], part
    assert report["all_ran"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(report))
    text = (tmp_path / "gpu_check.md").read_text()
    assert text == markdown(saved)  # rendered from the JSON
    table = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    for part in report["parts"]:
        assert part["status"] in table[part["part"]]  # every part has its row with its status
        if part["status"] != "ran":
            assert f"- `{part['part']}`: skipped: {part['reason']}" in text
    assert "NOT ALL PARTS RAN, 5 of 8" in text and "## torch.compile (dit-xl-2" in text


def test_gpu_check_stops_starting_parts_when_its_budget_is_spent(tmp_path, capsys):
    from ee_diffusion.benchmarks.gpu_check import main

    assert main(["--small", "--shapes", "dit-xl-2", "--out", str(tmp_path), "--budget-s", "0"]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [p["part"] for p in report["parts"]] == [
        "timings dit-xl-2", "compile dit-xl-2 static_half", "compile dit-xl-2 per_row_schedule", "attention dit-xl-2"]
    assert all(p["status"] == "skipped" and p["reason"] == "time budget spent (0 s)" for p in report["parts"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu_check: NOT ALL PARTS RAN, 0 of 4;") and "time budget spent" in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run on a machine without CUDA")
def test_gpu_check_without_cuda_lists_every_part_as_skipped_and_fails(tmp_path):
    from ee_diffusion.benchmarks.gpu_check import main

    assert main(["--out", str(tmp_path)]) == 1  # builds nothing: returns at once
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [p["part"] for p in report["parts"]] == GPU_CHECK_PARTS
    assert all(p["status"] == "skipped" and p["reason"].startswith("no CUDA device") for p in report["parts"])
    assert "no CUDA device" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_part_that_raises_or_outruns_the_budget_is_reported():
    import time

    from ee_diffusion.benchmarks.gpu_check import run_part

    report = {"parts": [], "budget_s": 0.3}

    def broken():
        raise RuntimeError("no kernel image is available")

    assert run_part(report, "compile x", broken, time.perf_counter() + 10) is None
    started = time.perf_counter()
    assert run_part(report, "timings x", lambda: time.sleep(10), started + 0.3) is None
    assert time.perf_counter() - started < 3  # stopped at the deadline, not after the part's 10 s
    assert run_part(report, "attention x", lambda: 7, time.perf_counter() + 10) == 7
    failed, stopped, ran = report["parts"]
    assert failed["status"] == "failed" and failed["reason"] == "RuntimeError: no kernel image is available"
    assert "broken" in failed["traceback"]
    assert stopped["status"] == "stopped" and stopped["reason"].startswith("time budget spent (0 s): cut off")
    assert ran["status"] == "ran" and ran["reason"] is None

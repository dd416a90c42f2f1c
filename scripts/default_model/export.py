"""Measure exit configs on the trained digits pipeline, pick the recommended one, and write the shipped asset.

python scripts/default_model/export.py --pipeline runs/digits-deediff/pipeline \
    --logs runs/digits-pretrain/log.jsonl runs/digits-deediff/log.jsonl --out ee_diffusion/assets/digits-dit

Every candidate exit config samples the same noise (20 images per digit, 25 DDIM steps, no guidance: this small
pixel model over-saturates under strong guidance, so full depth is also measured at guidance 2 and 4); an SVM
trained on real digits scores the class accuracy. The recommended config is the one with the smallest depth
fraction whose accuracy is within `--tolerance` of full depth. Weights are saved as fp16.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from ee_diffusion import EarlyExitConfig
from ee_diffusion._io import atomic_write_text
from ee_diffusion.backbones.registry import get_adapter
from ee_diffusion.pipelines import EarlyExitDiTPipeline
from ee_diffusion.schedules import StaticDepth, TimestepSchedule, UncertaintyThreshold
from ee_diffusion.training.digits_eval import digits_classifier, sample_accuracy


def candidates(transformer: torch.nn.Module) -> dict[str, EarlyExitConfig]:
    configs = {"full depth": EarlyExitConfig()}
    for depth in (6, 4):
        configs[f"StaticDepth({depth})"] = EarlyExitConfig(policy=StaticDepth(depth))
    configs["TimestepSchedule 8,7,6,5,4"] = EarlyExitConfig(
        policy=TimestepSchedule(boundaries=[200, 400, 600, 800], depths=[8, 7, 6, 5, 4]))
    configs["TimestepSchedule 8,6,4,3"] = EarlyExitConfig(
        policy=TimestepSchedule(boundaries=[250, 500, 750], depths=[8, 6, 4, 3]))
    for threshold in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        configs[f"UncertaintyThreshold({threshold})"] = EarlyExitConfig(policy=UncertaintyThreshold(threshold))
    # Keep the configs that fit this model (the depths above are for the 8-block default).
    adapter = get_adapter(transformer)

    def fits(config: EarlyExitConfig) -> bool:
        if config.policy is None:
            return True
        try:
            config.policy.validate_for(adapter)
        except ValueError:
            return False
        return True

    return {name: config for name, config in configs.items() if fits(config)}


def curve_rows(log: Path, every: int) -> list[dict]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    keep = [r for r in records if r["step"] % every == 0 or r is records[-1]]
    return keep


def fmt_list(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--logs", nargs="+", default=[])
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--guidance", type=float, default=1.0, help="guidance scale of the measurements (1 = none)")
    parser.add_argument("--steps", type=int, default=25, help="the demo's number of sampling steps")
    args = parser.parse_args()

    pipe = EarlyExitDiTPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    classifier = digits_classifier()
    results = {}
    for name, config in candidates(pipe.transformer).items():
        start = time.perf_counter()
        results[name] = sample_accuracy(
            pipe, classifier, config, per_class=args.per_class, num_inference_steps=args.steps,
            guidance_scale=args.guidance)
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        results[name]["config"] = config.to_dict()
        print(f"{name:32s} acc {results[name]['accuracy']:.3f} depth {results[name]['depth_fraction']:.3f}", flush=True)

    guided = {}
    for scale in (2.0, 4.0):
        guided[scale] = sample_accuracy(pipe, classifier, EarlyExitConfig(), per_class=args.per_class,
                                        num_inference_steps=args.steps, guidance_scale=scale)
        print(f"full depth, guidance {scale}: acc {guided[scale]['accuracy']:.3f}", flush=True)

    full = results["full depth"]["accuracy"]
    ok = [n for n, r in results.items() if n != "full depth" and r["accuracy"] >= full - args.tolerance]
    pool = ok or [n for n in results if n != "full depth"]
    key = (lambda n: results[n]["depth_fraction"]) if ok else (lambda n: -results[n]["accuracy"])
    chosen = min(pool, key=key)
    print(f"recommended: {chosen}")

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    pipe.set_default_exit_config(EarlyExitConfig.from_dict(results[chosen]["config"]))
    pipe.transformer.to(torch.float16)
    pipe.exit_heads.to(torch.float16)
    pipe.save_pretrained(str(out))
    index = json.loads((out / "model_index.json").read_text())
    index.pop("_name_or_path", None)  # a path on the machine that trained it
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")
    evaluation = {"classifier_held_out_accuracy": classifier.held_out_accuracy, "per_class": args.per_class,
                  "num_inference_steps": args.steps, "guidance_scale": args.guidance, "recommended": chosen, "results": results,
                  "full_depth_by_guidance": {str(k): v for k, v in guided.items()}}
    atomic_write_text(out / "evaluation.json", json.dumps(evaluation, indent=2) + "\n")
    atomic_write_text(out / "TRAINING.md", training_md(evaluation, [Path(p) for p in args.logs]))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.2f} MB)")


def training_md(evaluation: dict, logs: list[Path]) -> str:
    lines = [
        "# digits-dit: how the shipped default model was trained",
        "",
        "A class-conditional `DiTTransformer2DModel` (8x8x1 pixels, patch 2, 8 blocks, width 128, 4 heads, 10 classes"
        " + null class, 2.8M parameters) with timestep-conditioned DeeDiff uncertainty heads, trained on scikit-learn's"
        " 1797 digits by `ee_diffusion.training`. Rebuild: `scripts/train_default_model.sh` (configs in"
        " `scripts/default_model/`). Weights stored as fp16, loaded as float32.",
        "",
        "Stages: (1) `scratch` - L_simple only; (2) `deediff` - all weights and heads fine-tuned with"
        " L_simple + L_u + L_UAL (authors' normalised layer weights, L_u averaged over layers). EMA weights are saved.",
        "",
        "Logged losses are single-batch values (64 samples, random timesteps), so they are noisy. Wall times were"
        " measured on 2 CPU cores shared with other jobs, one intra-op thread per process.",
        "",
    ]
    for log in logs:
        if not log.is_file():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines()]
        every = max(1, (records[-1]["step"] // 8) // 25 * 25)
        rows = curve_rows(log, every)
        deediff = "uncertainty" in records[-1]
        lines += [f"## {log.parent.name} (`{log.name}`): {records[-1]['step']} steps, "
                  f"{records[-1]['time_s'] / 60:.1f} min wall", ""]
        header = "| step | lr | loss | L_simple |" + (" L_u | L_UAL |" if deediff else "") + f" per-block eps MSE (blocks 1..{len(records[-1].get('block_mse', []))}) |"
        lines += [header, "|" + "---|" * (header.count("|") - 1)]
        for r in rows:
            extra = f" {r['uncertainty']:.4f} | {r['ual']:.4f} |" if deediff else ""
            lines.append(f"| {r['step']} | {r['lr']:.2e} | {r['loss']:.4f} | {r['simple']:.4f} |{extra} "
                         f"{fmt_list(r.get('block_mse', []))} |")
        if deediff:
            lines += ["", f"Final mean certainty per block: {fmt_list(records[-1]['certainty'])}"]
        lines.append("")
    lines += [
        "## Sample quality and depth per exit config",
        "",
        f"{evaluation['per_class']} samples per digit (same noise for every row), DDIM {evaluation['num_inference_steps']}"
        f" steps, guidance {evaluation['guidance_scale']}. Class accuracy under an RBF SVM"
        f" trained on real digits (its held-out accuracy on real digits:"
        f" {evaluation['classifier_held_out_accuracy']:.3f}). Depth fraction = block evaluations / full depth.",
        "",
        "| exit config | class accuracy | depth fraction |",
        "|---|---|---|",
    ]
    for name, r in evaluation["results"].items():
        mark = " (recommended, the pipeline's default)" if name == evaluation["recommended"] else ""
        lines.append(f"| {name}{mark} | {r['accuracy']:.3f} | {r['depth_fraction']:.3f} |")
    lines += ["", "Full depth under classifier-free guidance (same samples otherwise): " + ", ".join(
        f"guidance {k}: accuracy {v['accuracy']:.3f}" for k, v in evaluation["full_depth_by_guidance"].items())
        + ". Sample this model with `guidance_scale=1` (or at most 2).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Train minivar on CIFAR-10: the tokenizer, then the VAR transformer on its tokens.

    python train.py                          # every stage in order, sized for one GPU
    python train.py --preset cpu             # sized for a laptop CPU (~15 min a stage)
    python train.py --stage tokenizer --data-dir ../shared/data --max-steps 500
    python train.py --stage tokenizer --resume --max-steps 3000   # continue, or extend

Several GPUs (or CPU processes): the same script under torchrun, e.g.

    torchrun --standalone --nproc_per_node=4 train.py --preset gpu

The AR baseline (raster order over a single-scale tokenizer's 8×8 map), in its own folder:

    python train.py --stage tokenizer --scales 8 --out-dir out-ar
    python train.py --stage ar --out-dir out-ar

Settings come from three places, later ones winning: the preset, the checkpoint being
resumed, and the flags you type. Ctrl-C saves a checkpoint; --resume continues exactly
(weights, optimizer, step, RNG; the data order is a function of the step).
"""
import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from minivar.data import DataError, load_cifar10
from minivar.tokenizer import TokenizerConfig
from minivar.training import distributed
from minivar.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivar.training.device import pick_device, rng_state, seed_everything, set_rng_state
from minivar.training.optim import adamw, lr_at, train_step
from minivar.training.stages import ARStage, TokenizerStage, VARStage
from minivar.var import VARConfig

STAGES = ("tokenizer", "var")  # what `--stage all` runs, in order
BASELINES = ("ar",)  # run on their own: --stage ar


@dataclass
class TrainConfig:
    stage: str = "all"  # tokenizer | var | ar | all (= tokenizer, then var)
    preset: str = "gpu"  # gpu | cpu | tiny (tiny: seconds, for tests and notebooks)
    data_dir: str = "./data"  # holds cifar-10-batches-py/ (downloaded there if absent)
    out_dir: str = "./out"  # checkpoints, logs and pictures
    device: str = "auto"  # auto = cuda, then mps, then cpu
    seed: int = 0
    max_steps: int = 20_000
    batch_size: int = 128  # global: under torchrun each of N processes takes batch_size / N rows
    lr: float = 1e-3  # peak learning rate, after warm-up, before cosine decay
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 25  # steps between lines in <stage>_log.jsonl
    eval_every: int = 2000  # steps between test evaluations (+ one at the end)
    eval_images: int = 10_000  # test images used by an evaluation
    reseed_every: int = 100  # tokenizer: steps between dead-code re-seeds
    scales: str = ""  # tokenizer: token-map sides, e.g. "8" for the AR baseline (default: the preset's)
    tokenizer: str = ""  # var, ar: tokenizer checkpoint (default: <out_dir>/tokenizer.pt)
    stop_at: int = 0  # if > 0: stop at this step with a checkpoint; the schedule still aims at max_steps
    resume: bool = False


# Per preset and stage: training settings, and the model's config.
PRESETS = {
    "gpu": {"tokenizer": ({"max_steps": 20_000, "batch_size": 128, "lr": 1e-3},
                          {"widths": (128, 256, 256), "res_blocks": 2}),
            "var": ({"max_steps": 30_000, "batch_size": 256, "lr": 4e-4, "weight_decay": 0.05, "warmup_steps": 1000},
                    {"dim": 512, "depth": 12, "heads": 8})},
    "cpu": {"tokenizer": ({"max_steps": 1400, "batch_size": 64, "lr": 2e-3, "eval_every": 500, "eval_images": 2000},
                          {"widths": (64, 128, 128), "res_blocks": 1}),
            "var": ({"max_steps": 1200, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "warmup_steps": 100,
                     "eval_every": 400, "eval_images": 2000}, {"dim": 192, "depth": 6, "heads": 4})},
    "tiny": {"tokenizer": ({"max_steps": 30, "batch_size": 16, "lr": 2e-3, "warmup_steps": 5, "log_every": 5,
                            "eval_every": 15, "eval_images": 64, "reseed_every": 10},
                           {"widths": (16, 32, 32), "res_blocks": 1, "vocab_size": 64, "latent_dim": 8}),
             "var": ({"max_steps": 20, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "log_every": 5,
                      "eval_every": 10, "eval_images": 64}, {"dim": 32, "depth": 2, "heads": 2})},
}
for _preset in PRESETS.values():  # the AR baseline gets VAR's budget: same width, depth, steps, batch
    _preset["ar"] = _preset["var"]
MODEL_CONFIGS = {"tokenizer": TokenizerConfig, "var": VARConfig, "ar": VARConfig}
STAGE_CLASSES = {"tokenizer": TokenizerStage, "var": VARStage, "ar": ARStage}


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB (process RSS)


def train_stage(kind, cli: dict, device_name=None):
    """Train one stage, resuming from <out_dir>/<kind>.pt if asked. Returns the checkpoint path.
    device_name: under torchrun, this process's device (it overrides --device)."""
    preset_train, preset_model = PRESETS[cli.get("preset", TrainConfig.preset)][kind]
    cfg = replace(TrainConfig(), **preset_train)
    model_cfg = MODEL_CONFIGS[kind](**preset_model)
    out_dir = Path(cli.get("out_dir", cfg.out_dir))
    ckpt_path = out_dir / f"{kind}.pt"
    ckpt = None
    if cli.get("resume"):
        ckpt = load_checkpoint(ckpt_path, kind)
        saved = {k: v for k, v in ckpt["train_config"].items() if k not in ("stop_at", "resume")}
        cfg = replace(cfg, **saved)
        model_cfg = MODEL_CONFIGS[kind](**ckpt["model_config"])
    cfg = replace(cfg, **cli)  # flags typed on the command line win
    if kind == "tokenizer" and cfg.scales:
        scales = parse_scales(cfg.scales)
        if scales[-1] != 8:
            raise ValueError(f"--scales {cfg.scales}: the tokenizer's latent is 8×8 (32×32 images, 4× down), "
                             "so the last scale must be 8")
        if ckpt is not None and scales != tuple(model_cfg.scales):
            raise ValueError(f"--scales {cfg.scales}: {ckpt_path} was trained with scales {tuple(model_cfg.scales)}; "
                             "scales cannot change on --resume (use another --out-dir)")
        model_cfg = replace(model_cfg, scales=scales)
    device = pick_device(device_name or cfg.device)
    rank, world_size = distributed.world()
    main = rank == 0  # only rank 0 prints, logs, evaluates and writes checkpoints
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} does not split evenly over {world_size} processes")
    torch.set_float32_matmul_precision("high")  # TF32 on recent NVIDIA GPUs; no effect elsewhere

    extra = {}
    if kind != "tokenizer":  # a transformer stage: it trains on a frozen tokenizer's tokens
        if ckpt is not None:  # resuming: the tokenizer travels inside the checkpoint
            extra = {"tokenizer_config": ckpt["tokenizer_config"], "tokenizer_state": ckpt["tokenizer"]}
        else:
            tok = load_checkpoint(cfg.tokenizer or out_dir / "tokenizer.pt", "tokenizer")
            extra = {"tokenizer_config": tok["model_config"], "tokenizer_state": tok["model"]}
            tc = extra["tokenizer_config"]  # the transformer's vocabulary and scales are the tokenizer's
            if (kind == "ar") != (len(tc["scales"]) == 1):
                raise ValueError(f"--stage {kind} needs a {'single' if kind == 'ar' else 'multi'}-scale tokenizer, but "
                                 f"{cfg.tokenizer or out_dir / 'tokenizer.pt'} has scales {tuple(tc['scales'])}: train one "
                                 f"with python train.py --stage tokenizer{' --scales 8' if kind == 'ar' else ''} "
                                 "--out-dir DIR, then pass --out-dir DIR (or --tokenizer DIR/tokenizer.pt)")
            model_cfg = replace(model_cfg, scales=tuple(tc["scales"]), vocab_size=tc["vocab_size"],
                                latent_dim=tc["latent_dim"])

    seed_everything(cfg.seed)
    with distributed.rank_zero_first():  # torchrun: one process downloads
        train_data = load_cifar10(cfg.data_dir, "train")
    test_data = load_cifar10(cfg.data_dir, "test", download=False)
    stage = STAGE_CLASSES[kind](cfg, model_cfg, train_data, test_data, device, rank=rank, world_size=world_size,
                                **extra)
    model = stage.model
    if distributed.active():  # torchrun: gradients are averaged over processes during backward
        stage.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)  # buffers (code-use counts) are summed explicitly, see stages.py
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    step, seconds = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        step, seconds = ckpt["step"], ckpt["train_seconds"]
    if main:
        print(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters on {device}"
              f"{f' × {world_size} processes' if world_size > 1 else ''}, steps {step} -> {cfg.max_steps}, "
              f"batch {cfg.batch_size}")

    def save(step):
        save_checkpoint({"kind": kind, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "model_config": asdict(model_cfg), "train_config": asdict(cfg), "step": step,
                         "train_seconds": seconds, "rng": rng_state(), **stage.checkpoint()}, ckpt_path)

    log_path = out_dir / f"{kind}_log.jsonl" if main else os.devnull
    log = open(log_path, "a" if ckpt is not None else "w")  # a fresh run, a fresh log
    bar = tqdm(total=cfg.max_steps, initial=step, desc=kind, dynamic_ncols=True, disable=not main)
    try:
        while step < (min(cfg.stop_at, cfg.max_steps) if cfg.stop_at > 0 else cfg.max_steps):
            t0 = time.perf_counter()
            _, metrics = train_step(stage, optimizer, step, lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps),
                                    cfg.grad_clip)
            metrics.update(stage.after_step(step, optimizer))
            step += 1
            seconds += time.perf_counter() - t0
            metrics[f"{stage.items}/s"] = stage.items_per_step / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if isinstance(v, float)}, refresh=False)
            if step % cfg.log_every == 0:
                log.write(json.dumps({"step": step, "seconds": round(seconds, 2), "lr": optimizer.param_groups[0]["lr"],
                                      **metrics}) + "\n")
                log.flush()
            if main and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                results = stage.evaluate()
                stage.save_picture(out_dir / f"{kind}_step{step:06d}.png")
                log.write(json.dumps({"step": step, "seconds": round(seconds, 2), "eval": results}) + "\n")
                log.flush()
                bar.write(f"step {step}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in results.items()))
                save(step)
        if step < cfg.max_steps and main:  # stopped early by --stop-at
            save(step)
            print(f"stopped at step {step} (--stop-at); continue with --resume")
    except KeyboardInterrupt:
        if main:
            save(step)
            print(f"\ninterrupted: saved {ckpt_path} at step {step}; continue with --resume")
        bar.close()
        sys.exit(130)
    bar.close()
    log.close()
    if not main:
        return ckpt_path
    print(f"{kind}: done in {seconds / 60:.1f} min of training ({step / max(seconds, 1e-9):.2f} steps/s, "
          f"{step * stage.items_per_step / max(seconds, 1e-9):.0f} {stage.items}/s), peak memory {peak_memory_gib(device):.2f} GiB; "
          f"checkpoint {ckpt_path}")
    return ckpt_path


def parse_scales(text):
    """'1,2,3,4,5,6,8' -> (1, 2, 3, 4, 5, 6, 8); increasing positive sides, or ValueError."""
    try:
        scales = tuple(int(s) for s in text.split(","))
    except ValueError:
        scales = ()
    if not scales or scales[0] < 1 or any(a >= b for a, b in zip(scales, scales[1:])):
        raise ValueError(f"--scales {text}: give increasing positive sides, e.g. 1,2,3,4,5,6,8 (VAR) or 8 (AR)")
    return scales


def _fmt(v):
    return " ".join(f"{x:.3g}" for x in v) if isinstance(v, list) else f"{v:.4g}"


def parse_args(argv=None) -> dict:
    """Flags for every TrainConfig field. Only the flags actually typed are returned."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action="store_true", default=None)
        else:
            parser.add_argument(flag, type=int if f.type in (int, "int") else float if f.type in (float, "float") else str,
                                default=None, help=f"default: {f.default}")
    cli = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if cli.get("stage", "all") not in STAGES + BASELINES + ("all",):
        parser.error(f"--stage {cli['stage']}: expected one of {', '.join(STAGES + BASELINES + ('all',))}")
    if cli.get("preset", "gpu") not in PRESETS:
        parser.error(f"--preset {cli['preset']}: expected one of {', '.join(PRESETS)}")
    for name in ("max_steps", "batch_size", "eval_every", "eval_images", "log_every", "reseed_every"):
        if name in cli and cli[name] < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return cli


def main(argv=None):
    cli = parse_args(argv)
    stage = cli.pop("stage", "all")
    device_name = None
    try:
        if distributed.world()[1] > 1:  # started by torchrun with several processes
            device_name = distributed.setup(cli.get("device", "auto"))
        Path(cli.get("out_dir", TrainConfig.out_dir)).mkdir(parents=True, exist_ok=True)
        for kind in STAGES if stage == "all" else [stage]:
            path = Path(cli.get("out_dir", TrainConfig.out_dir)) / f"{kind}.pt"
            if stage == "all" and path.exists() and not cli.get("resume"):  # `all` skips finished stages
                if distributed.world()[0] == 0:
                    print(f"{kind}: {path} exists, skipping (delete it to retrain, or --resume to continue)")
                continue
            train_stage(kind, cli, device_name)
        distributed.cleanup()
    except (DataError, CheckpointError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

"""Train minivar on CIFAR-10: a small classifier for the perceptual loss, the tokenizer, then VAR.

    python train.py --preset cpu                  # every stage, sized for a laptop CPU
    python train.py                               # every stage, sized for one GPU (--preset gpu)
    python train.py --stage tokenizer --data-dir ~/datasets --max-steps 500
    python train.py --stage var --resume --max-steps 3000      # continue, or extend, a run

The AR baseline predicts one token per step, over a single-scale tokenizer's 8×8 map, or
over VAR's own multi-scale token maps (then it differs from VAR in the order alone):

    python train.py --stage tokenizer --scales 8 --out-dir out-ar && python train.py --stage ar --out-dir out-ar
    python train.py --stage ar --out-dir out      # beside out/var.pt, on the same tokenizer

Several GPUs (or CPU processes): the same script under torchrun, e.g.
    torchrun --standalone --nproc_per_node=4 train.py

Settings come from three places, later ones winning: the preset, the checkpoint being
resumed, and the flags you type. Ctrl-C finishes the current step, saves and stops;
--resume then continues exactly (weights, optimizers, step, RNG; the data order is a
function of the step). A run never replaces another run's checkpoint unless told to (--force).
"""
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from minivar.data import DataError, load_cifar10
from minivar.flex_attention import fastest_attention
from minivar.tokenizer import TokenizerConfig
from minivar.training import distributed
from minivar.training.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from minivar.training.cli import StopSignal
from minivar.training.device import autocast, peak_memory_gib, pick_device, rng_state, seed_everything, set_rng_state
from minivar.training.optim import adamw, lr_at
from minivar.training.presets import MODEL_CONFIGS, MODEL_FLAGS, PRESETS, STAGES, TrainConfig, parse_args
from minivar.training.stages import ARStage, PerceptualStage, TokenizerStage, VARStage

STAGE_CLASSES = {"perceptual": PerceptualStage, "tokenizer": TokenizerStage, "var": VARStage, "ar": ARStage}


class Diverged(Exception):
    """The loss stopped being a finite number."""


def dependency(kind, cfg, model_cfg, out_dir):
    """What a stage trains on: VAR/AR a frozen tokenizer; the tokenizer the perceptual network
    (when its loss is on). Returned as the entries a checkpoint of `kind` carries."""
    if kind in ("var", "ar"):
        path = cfg.tokenizer or out_dir / "tokenizer.pt"
        tok = load_checkpoint(path, "tokenizer")
        if kind == "var" and len(tok["model_config"]["scales"]) == 1:
            raise ValueError(f"--stage var needs a multi-scale tokenizer, but {path} has scales "
                             f"{tuple(tok['model_config']['scales'])}: train one with python train.py --stage "
                             "tokenizer --out-dir DIR, then pass --out-dir DIR (or --tokenizer DIR/tokenizer.pt)")
        if not tok.get("finished", True):
            print(f"note: {path} is an unfinished run (step {tok['step']}); training on it as it is")
        return {"tokenizer": {"tokenizer_config": tok["model_config"], "tokenizer": tok["model"]}}
    if kind == "tokenizer" and model_cfg.perceptual_weight > 0:
        path = Path(cfg.perceptual or out_dir / "perceptual.pt")
        if not path.is_file():
            raise CheckpointError(f"the tokenizer's perceptual loss needs {path}: train it first with python train.py "
                                  "--stage perceptual (minutes), or pass --perceptual-weight 0")
        net = load_checkpoint(path, "perceptual")
        return {"perceptual": {"model_config": net["model_config"], "model": net["model"]}}
    return {}


def train_stage(kind, cli: dict, resume: bool, device_name=None):
    """Train one stage, continuing <out_dir>/<kind>.pt if `resume`. Returns the checkpoint path.
    device_name: under torchrun, this process's device (it overrides --device)."""
    preset_train, preset_model = PRESETS[cli.get("preset", TrainConfig.preset)][kind]
    cfg = replace(TrainConfig(), **preset_train)
    model_cfg = MODEL_CONFIGS[kind](**preset_model)
    out_dir = Path(cli.get("out_dir", cfg.out_dir))
    ckpt_path, ckpt = out_dir / f"{kind}.pt", None
    if resume:
        ckpt = load_checkpoint(ckpt_path, kind)
        saved = {k: v for k, v in ckpt["train_config"].items() if k in TrainConfig.__dataclass_fields__}
        cfg = replace(cfg, **{k: v for k, v in saved.items() if k not in ("stop_at", "resume", "force")})
        model_cfg = MODEL_CONFIGS[kind](**ckpt["model_config"])
    elif ckpt_path.exists() and not cli.get("force"):
        raise CheckpointError(f"{ckpt_path} holds another run; --resume continues it, --force starts over, "
                              "or pass another --out-dir")
    cfg = replace(cfg, **{k: v for k, v in cli.items() if k in TrainConfig.__dataclass_fields__})
    for name, (flag_kind, _) in MODEL_FLAGS.items():
        if name in cli and MODEL_CONFIGS[kind] is MODEL_CONFIGS[flag_kind]:  # var's flags are ar's too
            if ckpt is not None and name == "scales" and cli[name] != tuple(model_cfg.scales):
                raise ValueError(f"--scales: {ckpt_path} was trained with scales {tuple(model_cfg.scales)}; scales "
                                 "cannot change on --resume (use another --out-dir)")
            model_cfg = replace(model_cfg, **{name: cli[name]})
    device = pick_device(device_name or cfg.device)
    rank, world_size = distributed.world()
    main = rank == 0  # only rank 0 prints, logs, evaluates and writes checkpoints
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} does not split evenly over {world_size} processes")
    torch.set_float32_matmul_precision("high")  # TF32 on recent NVIDIA GPUs; no effect elsewhere

    extra = ckpt_dependency(ckpt, kind) if ckpt is not None else dependency(kind, cfg, model_cfg, out_dir)
    if kind in ("var", "ar"):  # the transformer's vocabulary and scales are the tokenizer's
        tc = extra["tokenizer"]["tokenizer_config"]
        model_cfg = replace(model_cfg, scales=tuple(tc["scales"]), vocab_size=tc["vocab_size"],
                            latent_dim=tc["latent_dim"])
    if getattr(model_cfg, "attention", None) == "auto":  # time both attention paths on this device, keep the faster
        with autocast(device):
            best, seconds, why = fastest_attention(STAGE_CLASSES[kind].model_class.prediction_blocks(model_cfg.scales),
                                                   model_cfg.heads, model_cfg.dim // model_cfg.heads,
                                                   cfg.batch_size // world_size, device)
        if main:
            print(f"--attention auto: {best} ({why or ', '.join(f'{k} {t * 1e3:.1f} ms' for k, t in seconds.items())})")
        model_cfg = replace(model_cfg, attention=best)
    seed_everything(cfg.seed)
    with distributed.rank_zero_first():  # torchrun: one process downloads
        train_data = load_cifar10(cfg.data_dir, "train")
    test_data = load_cifar10(cfg.data_dir, "test", download=False)
    stage = STAGE_CLASSES[kind](cfg, model_cfg, train_data, test_data, device, rank, world_size, **extra)
    model = stage.model
    if distributed.active():  # torchrun: gradients are averaged over processes during backward
        stage.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)  # buffers (code-use counts) are summed explicitly, see stages.py
    if cfg.compile:
        stage.net = torch.compile(stage.net)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, device)
    step, seconds = 0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        stage.load_state(ckpt)
        set_rng_state(ckpt["rng"])
        step, seconds = ckpt["step"], ckpt["train_seconds"]
    if main:
        print(f"{kind}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters on {device}"
              f"{f' × {world_size} processes' if world_size > 1 else ''}, steps {step} -> {cfg.max_steps}, "
              f"batch {cfg.batch_size}")

    def save(step, finished=False):
        save_checkpoint({"kind": kind, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "model_config": asdict(model_cfg), "train_config": asdict(cfg), "step": step,
                         "train_seconds": seconds, "rng": rng_state(), "finished": finished, **stage.state()},
                        ckpt_path)

    log = open_log(out_dir / f"{kind}_log.jsonl", step if ckpt is not None else None) if main else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc=kind, dynamic_ncols=True, disable=not main)
    # Divergence: a loss that is not finite, or 10⁴ times its first value (+1). Both are kept on the
    # device and read only when the loop must read something anyway (a log line, a checkpoint).
    first_bad, limit = torch.tensor(-1, device=device), None
    last_step = min(cfg.stop_at, cfg.max_steps) if cfg.stop_at > 0 else cfg.max_steps
    window = (time.perf_counter(), step)  # items/s over the steps since the last log line

    def check_diverged():
        if first_bad.item() >= 0:
            raise Diverged(f"the {kind} loss was not a finite number, or 10⁴ times its start, at step "
                           f"{first_bad.item() + 1}: training diverged (peak learning rate {cfg.lr:g}); lower --lr or "
                           f"--grad-clip. {ckpt_path} was not overwritten")

    with StopSignal() as stop:  # Ctrl-C (or SIGTERM) ends the loop at the next step boundary
        while step < last_step and not distributed.any_rank(stop.requested):
            t0 = time.perf_counter()
            metrics = stage.train_step(step, optimizer, lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps),
                                       cfg.grad_clip)
            loss = metrics["loss"]
            limit = 1e4 * (loss.abs() + 1) if limit is None else limit
            first_bad = torch.where((first_bad < 0) & ~(loss.abs() <= limit), step, first_bad)  # NaN fails <= too
            step += 1
            seconds += time.perf_counter() - t0
            bar.update(1)
            if step % cfg.log_every == 0 or step == last_step:
                check_diverged()  # reading the flag waits for the device: only here and before a save
                values = {k: v.tolist() for k, v in metrics.items()}
                items = (step - window[1]) * stage.items_per_step
                values[f"{stage.items}/s"] = items / (time.perf_counter() - window[0])
                window = (time.perf_counter(), step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if isinstance(v, float)}, refresh=False)
                write_line(log, {"step": step, "seconds": round(seconds, 2), "lr": optimizer.param_groups[0]["lr"],
                                 **values})
            if main and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                check_diverged()
                results = stage.evaluate()
                stage.save_picture(out_dir / f"{kind}_step{step:06d}.png")
                write_line(log, {"step": step, "seconds": round(seconds, 2), "eval": results})
                bar.write(f"step {step}: " + ", ".join(f"{k} {fmt(v, getattr(stage, 'scale_names', None))}"
                                                       for k, v in results.items()))
                save(step, finished=step == cfg.max_steps)
    bar.close()
    check_diverged()
    if step < cfg.max_steps and main:  # stopped early: Ctrl-C or --stop-at
        if step % cfg.eval_every:
            save(step)
        how = "interrupted" if stop.requested else "stopped (--stop-at)"
        print(f"{how} at step {step}: saved {ckpt_path}; continue with --resume", file=sys.stderr)
        if stop.requested:
            sys.exit(130)
    if log:
        log.close()
    if main and step == cfg.max_steps:
        print(f"{kind}: done in {seconds / 60:.1f} min of training ({step / max(seconds, 1e-9):.2f} steps/s), "
              f"peak memory {peak_memory_gib(device):.2f} GiB; checkpoint {ckpt_path}")
    return ckpt_path


def ckpt_dependency(ckpt, kind):
    """On --resume, what the stage trained on comes from its own checkpoint."""
    if kind in ("var", "ar"):
        return {"tokenizer": {"tokenizer_config": ckpt["tokenizer_config"], "tokenizer": ckpt["tokenizer"]}}
    return {"perceptual": ckpt["perceptual"]} if "perceptual" in ckpt else {}


def open_log(path, resumed_step):
    """The stage's log: a fresh one, or, on --resume, cut back to the checkpoint's step (a run
    killed after its last checkpoint logged steps that the resumed run will log again)."""
    kept = []
    if resumed_step is not None and path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= resumed_step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by the kill
    atomic_write(path, lambda f: f.write("".join(kept).encode()))
    return open(path, "a")


def write_line(log, row):
    if log is not None:
        log.write(json.dumps(row) + "\n")
        log.flush()


def fmt(v, names=None):
    """A number, or a list labelled by scale when there is one value per scale."""
    if not isinstance(v, list):
        return f"{v:.4g}"
    if names and len(names) == len(v):
        return "[" + " ".join(f"{n}: {x:.3g}" for n, x in zip(names, v)) + "]"
    return " ".join(f"{x:.3g}" for x in v)


def stages_to_run(stage, cli):
    """The stages `--stage` names, in order (`all`: perceptual, tokenizer, var). The perceptual
    network runs first wherever a new tokenizer needs it and none is there yet."""
    kinds = list(STAGES) if stage == "all" else [stage]
    tokenizer_cfg = TokenizerConfig(**PRESETS[cli.get("preset", TrainConfig.preset)]["tokenizer"][1])
    out_dir = Path(cli.get("out_dir", TrainConfig.out_dir))
    needed = ("tokenizer" in kinds and cli.get("perceptual_weight", tokenizer_cfg.perceptual_weight) > 0
              and not cli.get("perceptual") and not (cli.get("resume") and (out_dir / "tokenizer.pt").exists()))
    if needed and stage != "all" and not (out_dir / "perceptual.pt").exists():
        kinds.insert(0, "perceptual")
    return [k for k in kinds if k != "perceptual" or needed or stage == "perceptual"]


def main(argv=None):
    cli = parse_args(__doc__, argv)
    stage = cli.pop("stage", "all")
    device_name = None
    try:
        for flag_name in ("data_dir", "out_dir"):
            path = Path(cli.get(flag_name, getattr(TrainConfig, flag_name)))
            if path.exists() and not path.is_dir():
                raise ValueError(f"--{flag_name.replace('_', '-')} {path} is a file, not a folder")
        if distributed.world()[1] > 1:  # started by torchrun with several processes
            device_name = distributed.setup(cli.get("device", "auto"))
        for kind in stages_to_run(stage, cli):
            path, resume = Path(cli.get("out_dir", TrainConfig.out_dir)) / f"{kind}.pt", cli.get("resume", False)
            if kind != stage and not path.exists():  # a stage `all` runs, or one the tokenizer needs: new
                resume = False
            elif kind != stage and not cli.get("force"):  # already there: continued if unfinished, else skipped
                if load_checkpoint(path, kind).get("finished") and not resume:
                    if distributed.world()[0] == 0:
                        print(f"{kind}: {path} is finished, skipping (--force retrains it, --resume extends it)")
                    continue
                resume = True  # an unfinished stage is continued, never skipped
            train_stage(kind, cli, resume, device_name)
        distributed.cleanup()
    except (DataError, CheckpointError, ValueError, OSError, Diverged) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # outside the training loop, which stops at a step boundary itself
        print("\ninterrupted; every checkpoint written so far is kept", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

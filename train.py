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
import os
import signal
import sys

if __name__ == "__main__":  # Ctrl-C (or SIGTERM) while the imports below load (a second or two): quit quietly
    for _signal in (signal.SIGINT, signal.SIGTERM):  # (nothing started yet; no exception inside a half-done import)
        signal.signal(_signal, lambda signum, frame: os._exit(130))

import contextlib  # (the rest is imported after that handler, on purpose)
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from minivar.data import DataError, load_cifar10
from minivar.flex_attention import fastest_attention, use_flex
from minivar.tokenizer import TokenizerConfig
from minivar.training import distributed
from minivar.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivar.training.cli import StopSignal, is_out_of_memory, sigterm_like_ctrl_c
from minivar.training.device import autocast, choose_dtype, peak_memory_gib, pick_device, rng_state, time_one_step
from minivar.training.device import seed_everything, set_rng_state
from minivar.training.divergence import Diverged, DivergenceGuard
from minivar.training.files import RunLock, blocking_file
from minivar.training.inputs import ckpt_dependency, dependency, initial_weights, steps_left
from minivar.training.logs import fmt, open_log, write_line
from minivar.training.optim import adamw, lr_at
from minivar.training.presets import (
    PRESETS,
    STAGES,
    TrainConfig,
    flag_stages,
    parse_args,
    preset_name,
    run_settings,
)
from minivar.training.stages import ARStage, PerceptualStage, TokenizerStage, VARStage

STAGE_CLASSES = {"perceptual": PerceptualStage, "tokenizer": TokenizerStage, "var": VARStage, "ar": ARStage}


def train_stage(kind, cli: dict, resume: bool, device_name=None):
    """Train one stage, continuing <out_dir>/<kind>.pt if `resume`. Returns the checkpoint path.
    device_name: under torchrun, this process's device (it overrides --device)."""
    out_dir = Path(cli.get("out_dir", TrainConfig.out_dir))
    ckpt_path, ckpt = out_dir / f"{kind}.pt", None
    if resume:
        ckpt = load_checkpoint(ckpt_path, kind, resumable=True)
    elif ckpt_path.exists() and not cli.get("force"):
        raise CheckpointError(f"{ckpt_path} holds another run; --resume continues it, --force starts over, "
                              "or pass another --out-dir")
    cfg, model_cfg = run_settings(kind, cli, ckpt, ckpt_path)
    rank, world_size = distributed.world()
    main = rank == 0  # only rank 0 prints, logs, evaluates and writes checkpoints
    if ckpt is not None and not steps_left(ckpt, cfg, ckpt_path, main):
        return ckpt_path
    device = pick_device(device_name or cfg.device)
    if cfg.batch_size % world_size:
        raise ValueError(f"--batch-size {cfg.batch_size} does not split evenly over {world_size} processes")
    torch.set_float32_matmul_precision("high")  # TF32 on recent NVIDIA GPUs; no effect elsewhere

    model_cfg, init_weights, init = initial_weights(kind, cfg, model_cfg, cli)
    extra = ckpt_dependency(ckpt, kind, cli, ckpt_path) if ckpt is not None else \
        dependency(kind, cfg, model_cfg, out_dir, init)
    if kind in ("var", "ar"):  # the transformer's vocabulary and scales are the tokenizer's
        tc = extra["tokenizer"]["tokenizer_config"]
        model_cfg = replace(model_cfg, scales=tuple(tc["scales"]), vocab_size=tc["vocab_size"],
                            latent_dim=tc["latent_dim"])
    attention_auto = getattr(model_cfg, "attention", None) == "auto"
    if attention_auto:  # decided below, once the precision is
        model_cfg = replace(model_cfg, attention="sdpa")
    seed_everything(cfg.seed)
    with distributed.rank_zero_first():  # torchrun: one process downloads
        train_data = load_cifar10(cfg.data_dir, "train")
    if cfg.train_images > len(train_data[0]) and "train_images" in cli:  # (a preset's subset may exceed small data)
        raise ValueError(f"--train-images {cfg.train_images}: {cfg.data_dir} holds {len(train_data[0])} training "
                         "images")
    if cfg.train_images:  # a subset (the tiny preset's VAR: 2,000 images, so that tokenizing takes seconds)
        train_data = tuple(t[:cfg.train_images] for t in train_data)
    test_data = load_cifar10(cfg.data_dir, "test", download=False)
    stage = STAGE_CLASSES[kind](cfg, model_cfg, train_data, test_data, device, rank, world_size, **extra)
    model = stage.model
    dtype, why = choose_dtype(cfg.dtype, device, time_step=lambda d: time_one_step(stage, d))
    dtype = distributed.same_choice_on_every_rank(dtype, ("fp32", "bf16"))  # (timings differ between processes)
    if main and cfg.dtype == "auto":
        print(f"--dtype auto: {dtype} ({why})")
    cfg = replace(cfg, dtype=dtype)  # saved: --resume continues in the same precision
    stage.set_dtype(dtype)
    if attention_auto:  # time both attention paths on this device, in this precision; keep the faster
        with autocast(device, dtype):
            best, seconds, why = fastest_attention(model.block_sizes, model_cfg.heads, model_cfg.dim // model_cfg.heads,
                                                   cfg.batch_size // world_size, device)
        best = distributed.same_choice_on_every_rank(best, ("sdpa", "flex"))
        if main:
            print(f"--attention auto: {best} ({why or ', '.join(f'{k} {t * 1e3:.1f} ms' for k, t in seconds.items())})")
        model_cfg = replace(model_cfg, attention=best)
        if best == "flex":
            use_flex(model)
    if distributed.active():  # torchrun: gradients are averaged over processes during backward
        stage.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)  # buffers (code-use counts) are summed explicitly, see stages.py
    if cfg.compile:
        stage.net = torch.compile(stage.net)
    if init_weights is not None:
        stage.start_from(init_weights)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, device)
    step, seconds = 0, 0.0
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            stage.load_state(ckpt)
            set_rng_state(ckpt["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{ckpt_path}: its weights or optimizer state do not fit the model its settings "
                                  f"describe ({type(e).__name__}); --force starts over") from None
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
    guard = DivergenceGuard(kind, model, device, cfg.lr, ckpt_path)  # nothing diverged is ever saved
    last_step = min(cfg.stop_at, cfg.max_steps) if cfg.stop_at > 0 else cfg.max_steps
    window = (time.perf_counter(), step)  # items/s over the steps since the last log line
    interrupted = False

    with StopSignal() as stop:  # Ctrl-C (or SIGTERM) ends the loop at the next step boundary
        while step < last_step:
            if distributed.any_rank(stop.requested):  # a signal to any process stops them all, at the same step
                interrupted = True
                break
            t0 = time.perf_counter()
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == last_step
            metrics = stage.train_step(step, optimizer, lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps),
                                       cfg.grad_clip, log=log_now)
            guard.watch(step, metrics["loss"])
            step += 1
            seconds += time.perf_counter() - t0
            bar.update(1)
            if log_now:
                guard.check(step)  # reading the flag waits for the device: only here and before a save
                values = {k: v.tolist() for k, v in metrics.items()}
                items = (step - window[1]) * stage.items_per_step
                values[f"{stage.items}/s"] = items / (time.perf_counter() - window[0])
                window = (time.perf_counter(), step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if isinstance(v, float)}, refresh=False)
                write_line(log, {"step": step, "seconds": round(seconds, 2), "lr": optimizer.param_groups[0]["lr"],
                                 **values})
            if step % cfg.eval_every == 0 or step == cfg.max_steps:
                guard.check(step)
                results = stage.evaluate() if main else {}
                guard.check_results(results, main)
                if main:
                    stage.save_picture(out_dir / f"{kind}_step{step:06d}.png")
                    write_line(log, {"step": step, "seconds": round(seconds, 2), "eval": results})
                    bar.write(f"step {step}: " + ", ".join(f"{k} {fmt(v, getattr(stage, 'scale_names', None))}"
                                                           for k, v in results.items()))
                    save(step, finished=step == cfg.max_steps)
    bar.close()
    if log:
        log.close()
    if step < cfg.max_steps:  # stopped early: Ctrl-C, SIGTERM or --stop-at
        guard.check(step)
        if main:
            if step % cfg.eval_every:
                save(step)
            how = "interrupted" if interrupted else "stopped (--stop-at)"
            print(f"{how} at step {step}: saved {ckpt_path}; continue with --resume", file=sys.stderr)
        distributed.barrier()  # torchrun: the other processes wait for rank 0's checkpoint
        if interrupted:
            raise Interrupted
    elif main:
        took = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
        print(f"{kind}: done in {took} of training ({step / max(seconds, 1e-9):.2f} steps/s), "
              f"peak memory {peak_memory_gib(device):.2f} GiB; checkpoint {ckpt_path}")
    return ckpt_path


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a run, which saved its last step: exit code 130."""


def stages_to_run(stage, cli):
    """The stages `--stage` names, in order (`all`: perceptual, tokenizer, var). The perceptual
    network runs first where a tokenizer will be trained from scratch with a perceptual loss
    and none is there yet (a tokenizer already there carries its own, or is skipped)."""
    kinds = list(STAGES) if stage == "all" else [stage]
    tokenizer_cfg = TokenizerConfig(**PRESETS[preset_name(cli)]["tokenizer"][1])
    out_dir = Path(cli.get("out_dir", TrainConfig.out_dir))
    new_tokenizer = "tokenizer" in kinds and (cli.get("force") or not (out_dir / "tokenizer.pt").exists())
    needed = new_tokenizer and cli.get("perceptual_weight", tokenizer_cfg.perceptual_weight) > 0 and \
        not cli.get("perceptual")
    if needed and stage != "all" and not (out_dir / "perceptual.pt").exists():
        kinds.insert(0, "perceptual")
    return [k for k in kinds if k != "perceptual" or needed or stage == "perceptual"]


def check_flags(cli, kinds):
    """Refuse, in one line, what would otherwise be silently ignored: a flag for a stage this
    command does not train, or a folder flag naming a file."""
    for name in cli:
        stages = flag_stages(name)
        if stages and not set(stages) & set(kinds):
            raise ValueError(f"--{name.replace('_', '-')} is a setting of the {' and '.join(stages)} stage, which "
                             f"this command does not train (it trains: {', '.join(kinds)})" +
                             (" (VAR takes its scales from the tokenizer)" if name == "scales" else ""))
    for name in ("data_dir", "out_dir"):
        path = Path(cli.get(name, getattr(TrainConfig, name)))
        file, flag = blocking_file(path), "--" + name.replace("_", "-")
        if file is not None:
            raise ValueError(f"{flag} {path} is a file, not a folder" if file == path else
                             f"{flag} {path}: {file} is a file, not a folder")


def main(argv=None):
    sigterm_like_ctrl_c()  # Ctrl-C or SIGTERM from here on: KeyboardInterrupt, or StopSignal in the training loop
    cli = parse_args(__doc__, argv)
    stage = cli.pop("stage", "all")
    device_name, main_rank = None, distributed.world()[0] == 0
    try:
        kinds = stages_to_run(stage, cli)
        check_flags(cli, kinds)
        if cli.get("preset", "auto") == "auto" and main_rank and not cli.get("resume"):
            why = "a CUDA GPU is here" if preset_name(cli) == "gpu" else \
                "no CUDA GPU here: sized for a laptop CPU, about an hour; --preset gpu would take many hours"
            print(f"--preset auto: {preset_name(cli)} ({why})")
        if distributed.world()[1] > 1:  # started by torchrun with several processes
            device_name = distributed.setup(cli.get("device", "auto"))
        out_dir = Path(cli.get("out_dir", TrainConfig.out_dir))
        with RunLock(out_dir) if main_rank else contextlib.nullcontext():  # one run per folder
            for kind in kinds:
                path, resume = out_dir / f"{kind}.pt", cli.get("resume", False)
                if kind != stage and not path.exists():  # a stage `all` runs, or one the tokenizer needs: new
                    resume = False
                elif kind != stage and not cli.get("force"):  # already there: continued if unfinished, else skipped
                    if load_checkpoint(path, kind).get("finished") and not resume:
                        if main_rank:
                            print(f"{kind}: {path} is finished, skipping (--force retrains it, --resume extends it)")
                        continue
                    resume = True  # an unfinished stage is continued, never skipped
                train_stage(kind, cli, resume, device_name)
        distributed.cleanup()
    except Interrupted:  # the run saved its last step and said so
        distributed.cleanup()
        sys.exit(130)
    except (DataError, CheckpointError, ValueError, OSError, Diverged) as e:
        sys.exit(f"error: {e}")
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        sys.exit(f"error: out of memory ({str(e).splitlines()[0][:120]}); lower --batch-size")
    except MemoryError:
        sys.exit("error: out of memory; lower --batch-size")
    except KeyboardInterrupt:  # outside the training loop, which stops at a step boundary itself
        print("\ninterrupted; every checkpoint written so far is kept", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    try:
        main()
    finally:  # exiting: a further Ctrl-C has nothing left to stop (and would only interrupt the shutdown)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

"""The recipe search: which VAR training settings buy the most at a fixed wall clock.

    python -m minivar.studies.recipe --tokenizer out/tokenizer.pt --out-dir out-recipe
    python -m minivar.studies.recipe --tokenizer out/tokenizer.pt --out-dir out-recipe --trials base,lr2e-3 --jobs 2

Every trial is `python train.py --stage var --preset cpu` plus a few flags (TRIALS), and
gets the same time: the steps that the preset as it was before this study (1,700 steps,
no EMA) takes alone, converted into its own steps by its own seconds per step. Those
are measured first, trial after trial, each alone on the machine (a short run of the
trial's own settings), so that the budget is a ratio measured in one session; training
then runs by steps and may share the machine (--jobs) without changing what is learned.

Each trained trial is scored by FID on --n samples (the same seed, classes balanced) at a
few guidance weights, with its EMA weights and, for the base trial, its raw weights too
(the run is the same: the raw weights are the preset before EMA). Everything a phase
produced is kept in --out-dir, so running the command again continues where it stopped.
Writes the table to --out (JSON) and prints it. Needs the FID extra (metrics.py).
"""
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from minivar.data import load_cifar10
from minivar.training.checkpoint import CheckpointError, load_checkpoint, save_json
from minivar.training.cli import OneLineParser, positive_int
from minivar.training.device import describe_machine, seed_everything
from minivar.training.ema import EMA
from minivar.training.optim import adamw, lr_at
from minivar.training.presets import PRESETS, parse_args, run_settings
from minivar.training.stages import VARStage
from minivar.var import VAR

ROOT = Path(__file__).resolve().parents[2]
BUDGET_STEPS = PRESETS["cpu"]["var"][0]["max_steps"]  # of the reference settings ("before": no EMA)
REFERENCE = "before"

# name -> (flags on top of `--stage var --preset cpu`, what the trial asks, the trial whose step
# it costs: a learning rate or a decay changes no arithmetic, so those cost a step of "before"
# plus one EMA update, timed on its own: a difference far below the noise of timing whole steps)
TRIALS = {
    "before": (["--ema-decay", "0"], "the preset before this study (timed only: its weights are base's raw weights)",
               "before"),
    "base": ([], "the preset with an EMA of decay 0.999, warmed up", "before+ema"),
    "ema0.99": (["--ema-decay", "0.99"], "a shorter average: decay capped at 0.99 (half-life 69 steps)", "before+ema"),
    "lr2e-3": (["--lr", "2e-3"], "twice the peak learning rate", "before+ema"),
    "lr3e-3": (["--lr", "3e-3"], "three times the peak learning rate", "before+ema"),
    "batch16": (["--batch-size", "16"], "half the batch, about twice the steps", "batch16"),
    "batch64": (["--batch-size", "64"], "twice the batch, about half the steps", "batch64"),
    "wide256x4": (["--dim", "256", "--depth", "4", "--heads", "4"], "wider and shallower", "wide256x4"),
    "narrow128x8": (["--dim", "128", "--depth", "8", "--heads", "4"], "narrower and deeper", "narrow128x8"),
}


def train(name, flags, out, tokenizer, data_dir, max_steps, threads=None):
    """Run train.py for one trial into `out` (continuing it if it was stopped)."""
    out.mkdir(parents=True, exist_ok=True)
    for cache in Path(tokenizer).parent.glob("tokens-*.pt"):  # the tokenized data set, shared by every trial
        if not (out / cache.name).exists():
            (out / cache.name).symlink_to(cache.resolve())
    cmd = [sys.executable, str(ROOT / "train.py"), "--stage", "var", "--preset", "cpu", "--tokenizer", str(tokenizer),
           "--data-dir", str(data_dir), "--out-dir", str(out), "--max-steps", str(max_steps), *flags]
    if (out / "var.pt").exists():
        cmd.append("--resume")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    with open(out / "train.out", "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise RuntimeError(f"trial {name} failed ({' '.join(cmd)}); see {out / 'train.out'}")


def trial_stage(name, tokenizer_path, data, device):
    """The VARStage and optimizer a trial's `python train.py` would build, for timing its steps."""
    cli = parse_args("", ["--stage", "var", "--preset", "cpu", *TRIALS[name][0]])
    cli.pop("stage")
    cfg, model_cfg = run_settings("var", cli)
    tok = load_checkpoint(tokenizer_path, "tokenizer")
    tc = tok["model_config"]
    model_cfg = replace(model_cfg, scales=tuple(tc["scales"]), vocab_size=tc["vocab_size"], latent_dim=tc["latent_dim"])
    cfg = replace(cfg, out_dir=str(Path(tokenizer_path).parent))  # where the token cache is
    seed_everything(cfg.seed)
    stage = VARStage(cfg, model_cfg, *data, device, tokenizer={"tokenizer_config": tc, "tokenizer": tok["model"]})
    return stage, adamw(stage.model, cfg.lr, cfg.weight_decay, device), cfg


def seconds_per_step(names, tokenizer_path, data_dir, rounds, steps=10, warmup=5):
    """Seconds per training step of each trial, in one process: every trial's stage is built, then
    they take turns, `steps` steps each per round, for `rounds` rounds. Whatever else slows the
    machine down for a while slows every trial alike; the median over rounds is kept, and the
    spread (lowest, highest) is reported beside it."""
    device = torch.device("cpu")
    data = (load_cifar10(data_dir, "train"), load_cifar10(data_dir, "test", download=False))
    built = {name: trial_stage(name, tokenizer_path, data, device) for name in names}
    times = {name: [] for name in names}
    for r in range(rounds + 1):  # round 0 warms up (first calls allocate and pick kernels)
        for name, (stage, optimizer, cfg) in built.items():
            first = r * steps
            t0 = time.perf_counter()
            for step in range(first, first + (steps if r else warmup)):
                stage.train_step(step, optimizer, lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps), cfg.grad_clip)
            if r:
                times[name].append((time.perf_counter() - t0) / steps)
        if r:
            print(f"round {r}/{rounds}: " + ", ".join(f"{n} {t[-1]:.3f}" for n, t in times.items()), flush=True)
    return {name: {"median": statistics.median(t), "low": min(t), "high": max(t), "rounds": t}
            for name, t in times.items()}


def with_ema_update(before):
    """The timing of "before" plus one EMA update of the preset's model (the median of 100, timed
    alone): what a step with an average but the same arithmetic costs."""
    cli = parse_args("", ["--stage", "var", "--preset", "cpu"])
    cli.pop("stage")
    model = VAR(run_settings("var", cli)[1])
    ema, updates = EMA(model, 0.999), []
    for step in range(100):
        t0 = time.perf_counter()
        ema.update(model, step)
        updates.append(time.perf_counter() - t0)
    t = statistics.median(updates)
    return {"median": before["median"] + t, "low": before["low"] + t, "high": before["high"] + t, "ema_update": t,
            "rounds": [r + t for r in before["rounds"]]}


def final_eval(out):
    """The last evaluation line of a trial's log: test cross-entropy of raw and EMA weights."""
    evals = [json.loads(line) for line in (out / "var_log.jsonl").read_text().splitlines() if '"eval"' in line]
    return evals[-1]["eval"]


def score(out, weights, n, cfg_scales, data_dir, cache_dir):
    """FID rows of a trained trial (the evaluate study, run in a process of its own)."""
    target = out / f"fid{n}_{weights}.json"
    if not target.exists():
        cmd = [sys.executable, "-m", "minivar.studies.evaluate", "--ckpt", str(out / "var.pt"), "--n", str(n),
               "--cfg-scale", ",".join(map(str, cfg_scales)), "--top-k", "50", "--weights", weights,
               "--data-dir", str(data_dir), "--cache-dir", str(cache_dir), "--out", str(target)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise RuntimeError(f"scoring {out} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(target.read_text())["rows"]


def main(argv=None):
    p = OneLineParser(prog="python -m minivar.studies.recipe", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="the tokenizer every trial trains on (its folder may hold the "
                                                      "token cache, tokens-*.pt, which the trials share)")
    p.add_argument("--out-dir", default="out-recipe", help="one folder per trial, and the timings (default: out-recipe)")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (default: ./data)")
    p.add_argument("--trials", default=",".join(TRIALS), help=f"comma-separated, of: {', '.join(TRIALS)} (default: all)")
    p.add_argument("--n", type=positive_int, default=1000, help="samples per FID (default: 1000)")
    p.add_argument("--cfg-scale", default="3,4.5,6", help="guidance weights scored, top-k 50 (default: 3,4.5,6)")
    p.add_argument("--jobs", type=positive_int, default=1, help="trials trained at once, one thread each if more "
                                                               "than one (timing always runs alone; default: 1)")
    p.add_argument("--rounds", type=positive_int, default=6, help="timing rounds (default: 6)")
    p.add_argument("--until", choices=("time", "train", "score"), default="score",
                   help="stop after this phase (default: score, the whole study)")
    p.add_argument("--out", default="results/recipe/trials_cpu.json", help="the table (JSON)")
    args = p.parse_args(argv)
    names = [t for t in args.trials.split(",") if t]
    unknown = [t for t in names if t not in TRIALS]
    if unknown:
        p.error(f"--trials: unknown {', '.join(unknown)}; choose from {', '.join(TRIALS)}")
    try:
        cfg_scales = [float(c) for c in args.cfg_scale.split(",")]
    except ValueError:
        p.error(f"--cfg-scale {args.cfg_scale}: give numbers, comma-separated")
    root, tokenizer = Path(args.out_dir), Path(args.tokenizer)
    try:
        load_checkpoint(tokenizer, "tokenizer")
        timings_path = root / "seconds_per_step.json"  # phase 1: seconds per step, the trials taking turns
        timed = json.loads(timings_path.read_text()) if timings_path.exists() else {}
        wanted = list(dict.fromkeys([REFERENCE, *(TRIALS[name][2].removesuffix("+ema") for name in names)]))
        if not set(wanted) <= set(timed.get("trials", {})):
            print(f"timing {', '.join(wanted)}: {args.rounds} rounds of 10 steps each, nothing else may run",
                  flush=True)
            timed = {"trials": seconds_per_step(wanted, tokenizer, args.data_dir, args.rounds),
                     "machine": describe_machine(torch.device("cpu"))}
        if "before+ema" not in timed["trials"]:
            timed["trials"]["before+ema"] = with_ema_update(timed["trials"][REFERENCE])
        save_json(timed, timings_path)
        timings = {name: timed["trials"][TRIALS[name][2]]["median"] for name in [REFERENCE, *names]}
        budget_s = BUDGET_STEPS * timings[REFERENCE]
        steps = {name: round(budget_s / timings[name]) for name in names if name != REFERENCE}
        if args.until == "time":
            print("\n".join(f"{name:12s} {t['median']:.3f} s/step ({t['low']:.3f}-{t['high']:.3f}) -> "
                             f"{steps.get(name, BUDGET_STEPS)} steps" for name, t in timed["trials"].items()))
            return

        pending = [name for name in steps if not load_done(root / name)]  # phase 2: train, by steps
        threads = 1 if args.jobs > 1 else None
        running = []
        while pending or running:
            while pending and len(running) < args.jobs:
                name = pending.pop(0)
                print(f"training {name}: {steps[name]} steps", flush=True)
                running.append((name, subprocess.Popen([sys.executable, "-c", TRAIN_ONE, name, str(steps[name]),
                                                        str(root / name), str(tokenizer), str(args.data_dir),
                                                        str(threads or 0)], cwd=ROOT)))
            time.sleep(5)
            for job in [j for j in running if j[1].poll() is not None]:
                running.remove(job)
                if job[1].returncode:
                    raise RuntimeError(f"trial {job[0]} failed; see {root / job[0] / 'train.out'}")

        if args.until == "train":
            return
        table = []  # phase 3: score
        for name in steps:
            out = root / name
            ckpt = load_checkpoint(out / "var.pt", "var")
            for weights in (["ema", "raw"] if name == "base" else ["ema"]):
                if weights == "ema" and "ema" not in ckpt:
                    continue
                print(f"scoring {name} ({weights} weights) ...", flush=True)
                rows = score(out, weights, args.n, cfg_scales, args.data_dir, root)
                best = min(rows, key=lambda r: r["fid"])
                ev = final_eval(out)
                label = name if weights == "ema" else REFERENCE
                table.append({"trial": label, "weights": weights, "flags": TRIALS[label][0], "what": TRIALS[label][1],
                              "steps": steps[name], "seconds_per_step": timings[label],
                              "train_minutes": ckpt["train_seconds"] / 60,
                              "test_ce": ev["ema_ce" if weights == "ema" else "ce"],
                              "fid": {str(r["cfg_scale"]): r["fid"] for r in rows},
                              "best_fid": best["fid"], "best_cfg": best["cfg_scale"]})
    except (CheckpointError, RuntimeError, OSError, KeyError, ValueError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    machine = timed["machine"]
    print(f"\nbudget: {BUDGET_STEPS} steps of '{REFERENCE}' at {timings[REFERENCE]:.3f} s = {budget_s / 60:.1f} min "
          f"of training steps ({machine['cpu']}, {machine['threads']} threads); FID on {args.n} samples, top-k 50")
    print(f"{'trial':12s} {'weights':7s} {'steps':>6s} {'s/step':>7s} {'test CE':>8s} " +
          " ".join(f"{'cfg ' + format(c, 'g'):>8s}" for c in cfg_scales))
    for row in table:
        print(f"{row['trial']:12s} {row['weights']:7s} {row['steps']:6d} {row['seconds_per_step']:7.3f} "
              f"{row['test_ce']:8.3f} " + " ".join(f"{v:8.2f}" for v in row["fid"].values()))
    save_json({"budget_steps": BUDGET_STEPS, "reference": REFERENCE, "budget_minutes": budget_s / 60, "n": args.n,
               "cfg_scales": cfg_scales, "top_k": 50, "machine": machine, "timing": timed["trials"], "trials": table,
               "command": "python -m minivar.studies.recipe " + " ".join(argv if argv is not None else sys.argv[1:])},
              Path(args.out))
    print(f"wrote {args.out}")


def load_done(out):
    """Whether a trial's run finished (its checkpoint says so)."""
    try:
        return load_checkpoint(out / "var.pt", "var").get("finished", False)
    except CheckpointError:
        return False


# One trial's training, in a process of its own (so that several can run at once).
TRAIN_ONE = """
import sys
from pathlib import Path
from minivar.studies.recipe import TRIALS, train
name, steps, out, tokenizer, data_dir, threads = sys.argv[1:]
train(name, TRIALS[name][0], Path(out), tokenizer, data_dir, int(steps), threads=int(threads) or None)
"""


if __name__ == "__main__":
    main()

"""A recipe search for the cpu preset's VAR at a fixed wall clock, one trial at a time, resumable.

    python -m minivar.studies.recipe --list         # the trials, why each, and the results of those done
    python -m minivar.studies.recipe                # run the next trial not done yet (--all: all of them)
    python -m minivar.studies.recipe --only lr2x    # that trial
    python -m minivar.studies.recipe --confirm base,combined --n 10000    # 10,000-sample FID of finished trials

Every trial trains the preset's VAR stage from scratch on the same frozen tokenizer (by default
the one the shipped model carries) with one change, for the wall clock the preset's own steps
take: a trial whose step costs more or less (a batch size, a model size) trains steps × (the
baseline's seconds per step / its own), the two timed in turns in one process, so that a busy
machine slows both alike. It then draws --n samples at a small guidance sweep and scores their
FID against the CIFAR-10 test split. When the single changes are done, `combined` takes every
change that helped (recipe_trials.py says which and why).

Each trial writes results/recipe/<name>.json as soon as it is scored (settings, steps, seconds,
test cross-entropy of the raw and averaged weights, FID per guidance setting, machine); a stop
loses at most the trial in flight, which resumes from its last checkpoint (<work-dir>/<name>).
The next invocation continues where the JSON files stop.
"""
import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from minivar.quantizer import flatten_scales
from minivar.studies import evaluate
from minivar.studies.recipe_trials import TRIALS, preset_settings, read_result, trial_changes
from minivar.training.checkpoint import CheckpointError, frozen_tokenizer, load_checkpoint, save_json
from minivar.training.cli import OneLineParser, positive_int, sigterm_like_ctrl_c
from minivar.training.device import describe_machine, pick_device
from minivar.training.inputs import carried_tokenizer
from minivar.training.optim import adamw
from minivar.training.presets import PRESETS, run_settings
from minivar.var import VAR

ROOT = Path(__file__).resolve().parents[2]  # the project's folder, where train.py is
STEP_SHAPE = ("batch_size", "dim", "depth", "heads", "dtype")  # settings that change what a step costs


def seconds_per_step(model_cfg, batch, quantizer, device):
    """Median seconds of one training step (teacher forcing, forward, backward, AdamW) of a VAR of
    model_cfg at this batch, random weights and tokens; returns a function timing one more round."""
    torch.manual_seed(0)
    model = VAR(model_cfg).to(device)
    optimizer = adamw(model, 1e-4, 0.05, device)
    tokens = flatten_scales([torch.randint(model_cfg.vocab_size, (batch, s, s), device=device)
                             for s in model_cfg.scales])
    labels = torch.randint(10, (batch,), device=device)

    def step():
        t = time.perf_counter()
        _, loss = model(model.teacher_forcing_inputs(quantizer, tokens), labels, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t
    step()  # warm-up
    return step


def step_ratio(trial_cfg, trial_batch, base_cfg, base_batch, quantizer, device, rounds=7):
    """A trial's seconds per step over the baseline's, the two timed in turns."""
    trial, base = (seconds_per_step(c, b, quantizer, device) for c, b in ((trial_cfg, trial_batch),
                                                                          (base_cfg, base_batch)))
    times = [(trial(), base()) for _ in range(rounds)]
    return statistics.median(t for t, _ in times) / statistics.median(b for _, b in times)


def planned_steps(name, train_flags, model_flags, args, tokenizer):
    """(steps, step cost over the baseline's): the trial's share of the baseline's wall clock. Kept in
    <work-dir>/<name>/plan.json, so that a trial resumed after a stop aims at the same step."""
    plan = Path(args.work_dir) / name / "plan.json"
    if plan.is_file():
        saved = json.loads(plan.read_text())
        return saved["steps"], saved["step_cost_ratio"]
    base_train, _ = preset_settings(args.preset)
    ratio = 1.0
    if any(k in STEP_SHAPE for k in {**train_flags, **model_flags}):  # a step of another cost: time it against base's
        device = pick_device(args.device)
        quantizer = frozen_tokenizer(tokenizer["model_config"], tokenizer["model"]).to(device).quantizer
        tc = tokenizer["model_config"]
        shapes = {"scales": tuple(tc["scales"]), "vocab_size": tc["vocab_size"], "latent_dim": tc["latent_dim"]}
        base_cfg = replace(run_settings("var", {"preset": args.preset})[1], **shapes)
        ratio = step_ratio(replace(base_cfg, **model_flags), train_flags.get("batch_size", base_train["batch_size"]),
                           base_cfg, base_train["batch_size"], quantizer, device)
    steps = max(1, round(base_train["max_steps"] / ratio))
    save_json({"steps": steps, "step_cost_ratio": ratio}, plan)
    return steps, ratio


def train_to_the_end(command):
    """Run train.py; its exit status. In its own session, so that Ctrl-C or SIGTERM reaches it once,
    from here: it finishes its step, saves and exits 130, and only then does the study stop (killed
    while the study waits, it would lose the steps since its last checkpoint)."""
    child = subprocess.Popen(command, start_new_session=True)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        while child.poll() is None:
            try:
                child.wait()
            except KeyboardInterrupt:  # a second one: train.py then quits without saving, as at its own prompt
                child.send_signal(signal.SIGINT)
        raise


def run_trial(name, args):
    """Train (or resume) with train.py, score, and write results/recipe/<name>.json."""
    device = pick_device(args.device)
    tokenizer = carried_tokenizer(load_checkpoint(args.tokenizer), args.tokenizer)
    train_flags, model_flags = trial_changes(name, args.preset, args.results_dir)
    folder = Path(args.work_dir) / name
    steps, ratio = planned_steps(name, train_flags, model_flags, args, tokenizer)
    flags = {"preset": args.preset, "data_dir": args.data_dir, "out_dir": folder, "tokenizer": args.tokenizer,
             "device": args.device, "max_steps": steps, **train_flags, **model_flags}
    command = [sys.executable, str(ROOT / "train.py"), "--stage", "var"]
    for key, value in flags.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    ckpt_path = folder / "var.pt"
    if not (ckpt_path.is_file() and load_checkpoint(ckpt_path).get("finished")):
        seed_token_cache(folder, Path(args.work_dir))
        code = train_to_the_end(command + (["--resume"] if ckpt_path.is_file() else []))  # (train.py's own output)
        if code == 130:
            raise KeyboardInterrupt
        if code != 0:
            raise ValueError(f"trial {name}: train.py stopped with exit status {code} (its own line above)")
    ckpt = load_checkpoint(ckpt_path)
    log = [json.loads(line) for line in (folder / "var_log.jsonl").read_text().splitlines() if line.strip()]
    last_eval = [entry for entry in log if "eval" in entry][-1]
    scores = score(ckpt_path, args, args.n, folder / f"fid{args.n}.json")
    result = {"name": name, "why": TRIALS.get(name, ("the single changes that helped, together",))[0],
              "preset": args.preset, "changes": {**train_flags, **model_flags}, "step_cost_ratio": ratio,
              "steps": ckpt["step"], "train_seconds": round(ckpt["train_seconds"], 1),
              "test_ce": last_eval["eval"]["ce"], "test_ce_ema": last_eval["eval"].get("ema_ce"),
              "eval_images": ckpt["train_config"]["eval_images"], "n": args.n, "fid": scores,
              "best_fid": min(r["fid"] for r in scores), "machine": describe_machine(device),
              "train_command": " ".join(["python train.py", *map(str, command[2:])]),
              "command": f"python -m minivar.studies.recipe --only {name}"}
    save_json(result, Path(args.results_dir) / f"{name}.json")
    return result


def seed_token_cache(folder, work_dir):
    """The tokenized CIFAR-10 is the same for every trial (same tokenizer, same data): tokenize once."""
    folder.mkdir(parents=True, exist_ok=True)
    for cache in sorted(work_dir.glob("*/tokens-*.pt")):
        if not (folder / cache.name).exists():
            shutil.copyfile(cache, folder / cache.name)


def score(ckpt_path, args, n, out, guidance=None):
    """FID rows of the trial's averaged weights at each guidance setting (evaluate.py)."""
    evaluate.main(["--ckpt", str(ckpt_path), "--n", str(n), "--cfg-scale", guidance or args.cfg_scale,
                   "--top-k", str(args.top_k), "--data-dir", args.data_dir, "--device", args.device,
                   "--cache-dir", str(Path(args.work_dir)), "--out", str(out)])
    return [{"cfg_scale": r["cfg_scale"], "top_k": r["top_k"], "fid": r["fid"]}
            for r in json.loads(Path(out).read_text())["rows"]]


def confirm(name, args):
    """The trial's FID on args.n samples at its best guidance setting of the sweep."""
    result = read_result(args.results_dir, name)
    if result is None:
        raise ValueError(f"--confirm {name}: that trial is not finished yet")
    best = min(result["fid"], key=lambda r: r["fid"])
    folder = Path(args.work_dir) / name
    rows = score(folder / "var.pt", args, args.n, folder / f"fid{args.n}.json", guidance=str(best["cfg_scale"]))
    confirmed = {"name": name, "n": args.n, **rows[0], "machine": describe_machine(pick_device(args.device)),
                 "command": f"python -m minivar.studies.recipe --confirm {name} --n {args.n}"}
    save_json(confirmed, Path(args.results_dir) / f"{name}_fid{args.n}.json")
    return confirmed


def table(args):
    """A markdown table of every trial: why, steps, test CE, FID per guidance setting."""
    lines = ["| trial | change | steps | minutes | test CE (raw / EMA) | FID per guidance | best |",
             "| --- | --- | ---: | ---: | --- | --- | ---: |"]
    for name in [*TRIALS, "combined"]:
        r = read_result(args.results_dir, name)
        if r is None:
            lines.append(f"| {name} | not run yet | | | | | |")
            continue
        fids = ", ".join(f"{f['fid']:.1f} ({f['cfg_scale']:g})" for f in r["fid"])
        change = ", ".join(f"{k} {v}" for k, v in r["changes"].items()) or "none"
        lines.append(f"| {name} | {change} | {r['steps']} | {r['train_seconds'] / 60:.1f} | {r['test_ce']:.3f} / "
                     f"{r['test_ce_ema']:.3f} | {fids} | {r['best_fid']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = OneLineParser(prog="python -m minivar.studies.recipe", description=__doc__.split("\n\n")[0], epilog=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the trials and the results so far, run nothing")
    p.add_argument("--only", help="comma-separated trial names to run (default: the next one not done)")
    p.add_argument("--all", action="store_true", help="run every trial not done, one after the other")
    p.add_argument("--confirm", help="comma-separated finished trials to score on --n samples at their best guidance")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="whose VAR stage (default: cpu)")
    p.add_argument("--tokenizer", default="checkpoints/var_cpu.pt", help="the frozen tokenizer: a tokenizer "
                   "checkpoint, or a var checkpoint carrying one (default: the shipped model's)")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (default: ./data)")
    p.add_argument("--work-dir", default="out-recipe", help="the trials' runs and token cache (default: out-recipe)")
    p.add_argument("--results-dir", default="results/recipe", help="one JSON per trial (default: results/recipe)")
    p.add_argument("--n", type=positive_int, default=1000, help="samples per FID (default: 1000)")
    p.add_argument("--cfg-scale", default="3,4.5,6", help="the guidance sweep (default: 3,4.5,6)")
    p.add_argument("--top-k", type=int, default=50, help="top-k of every sample (default: 50)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    sigterm_like_ctrl_c()  # SIGTERM stops the study as Ctrl-C does: the running trial saves, one line, exit 130
    args = p.parse_args(argv)
    names = [*TRIALS, "combined"]
    try:
        if args.list:
            print(table(args))
            return
        if args.confirm:
            for name in args.confirm.split(","):
                r = confirm(name, args)
                print(f"{name}: FID {r['fid']:.2f} on {r['n']} samples (cfg {r['cfg_scale']:g}, top-k {r['top_k']})")
            return
        todo = args.only.split(",") if args.only else [n for n in names if read_result(args.results_dir, n) is None]
        unknown = [n for n in todo if n not in names]
        if unknown:
            raise ValueError(f"--only {','.join(unknown)}: no such trial; the trials are {', '.join(names)}")
        for name in todo if args.all or args.only else todo[:1]:
            r = run_trial(name, args)
            print(f"{name}: {r['steps']} steps, test CE {r['test_ce']:.3f}, best FID {r['best_fid']:.2f} "
                  f"(n = {r['n']}); wrote {Path(args.results_dir) / (name + '.json')}")
        if not todo:
            print("every trial is done: --list shows them, --confirm scores the best on more samples")
    except (CheckpointError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished trials are kept in {args.results_dir}, the running one resumes from its "
              "last checkpoint; run the same command to continue", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

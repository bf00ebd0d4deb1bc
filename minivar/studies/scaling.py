"""Scaling laws: how VAR's test loss falls with model size and with training compute.

    python -m minivar.studies.scaling --tokenizer out/tokenizer.pt   # ≈ 1 h on 2 CPU cores
    python -m minivar.studies.scaling --depths 1,2,3 --tokens 1e6    # a few minutes

The paper (§5.1, Fig. 5) trains VAR transformers of depth d (width 64·d, d heads) and
finds that test loss falls as a power of the parameter count N,

    L = (a·N)^(−α),   α ≈ 0.23 for the last scale's loss, α ≈ 0.20 for the mean over scales,

and likewise as a power of training compute C, along the Pareto frontier of all runs.
This is the same experiment shrunk to fit a CPU: depths 1…6, width 32·d, d heads (head
dim 32). Every size is trained from scratch on the same frozen tokenizer's token maps,
for the same number of tokens, with the same batch and schedule as train.py (optim.py).
Then its test cross-entropy on the CIFAR-10 test split: the mean over all tokens (L_avg)
and over the last, 8×8 scale alone (L_last). Compute is the FLOPs of every training step
(bench.transformer_train_flops). A few test evaluations during training (on a subset)
trace each size's loss against compute; the frontier is the points no cheaper run beats.

A power law is a straight line in log-log space, log L = −α·log N − α·log a, so the fits
are least squares on the logs, and R² is measured there.

Sizes finish one at a time and each is written to the JSON file at once: after an
interruption the same command continues with the next size (--fresh starts over).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import matplotlib.ticker
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from minivar.data import DataError, load_cifar10
from minivar.studies.bench import transformer_train_flops
from minivar.studies.complexity import fit_slope
from minivar.training.checkpoint import CheckpointError, load_checkpoint, save_json
from minivar.training.cli import OneLineParser, positive, positive_int, sigterm_like_ctrl_c
from minivar.training.device import DTYPES, choose_dtype, describe_machine, pick_device, seed_everything
from minivar.training.optim import adamw, lr_at
from minivar.training.plots import save_figure
from minivar.training.stages import VARStage
from minivar.var import VARConfig

PAPER_ALPHA = {"avg": 0.20, "last": 0.23}  # exponents of L against N in the paper's Fig. 5
CURVE_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1)  # where in training the loss curve is sampled


def fit_power_law(xs, losses):
    """L = (a·x)^(−α) through the points: {"a", "alpha", "r2"}, R² of the line in log-log space."""
    slope = fit_slope(xs, losses)  # d log L / d log x = −α
    u, y = [math.log(x) for x in xs], [math.log(v) for v in losses]
    intercept = sum(y) / len(y) - slope * sum(u) / len(u)  # = −α·log a
    residual = sum((yi - (intercept + slope * ui)) ** 2 for ui, yi in zip(u, y))
    total = sum((yi - sum(y) / len(y)) ** 2 for yi in y)
    return {"a": math.exp(intercept / slope), "alpha": -slope, "r2": 1 - residual / total if total > 0 else 1.0,
            "A": math.exp(intercept)}  # the same law written L = A·x^(−α): A = a^(−α), easier to read when α is small


def pareto_frontier(points):
    """The (compute, loss) points that no cheaper point beats, in order of compute."""
    frontier = []
    for c, loss in sorted(points):
        if not frontier or loss < frontier[-1][1]:
            frontier.append((c, loss))
    return frontier


def size_config(depth, width_per_depth, tokenizer_config):
    """The VAR of depth d: width width_per_depth·d, d heads; vocabulary and scales are the tokenizer's."""
    return VARConfig(dim=width_per_depth * depth, depth=depth, heads=depth, scales=tuple(tokenizer_config["scales"]),
                     vocab_size=tokenizer_config["vocab_size"], latent_dim=tokenizer_config["latent_dim"])


def train_one_size(depth, settings, tokenizer, data, device):
    """Train one size from scratch for settings["tokens"] tokens; its losses, FLOPs and time."""
    seed_everything(settings["seed"])  # every size sees the same batches in the same order
    run = SimpleNamespace(batch_size=settings["batch_size"], seed=settings["seed"], eval_images=settings["eval_images"],
                          out_dir=Path(settings["tokenizer"]).parent,  # the token cache lives beside the tokenizer
                          ema_decay=0.0)  # the losses of the raw weights, as the study was first measured
    stage = VARStage(run, size_config(depth, settings["width_per_depth"], tokenizer["model_config"]), *data, device,
                     tokenizer={"tokenizer_config": tokenizer["model_config"], "tokenizer": tokenizer["model"]})
    stage.set_dtype(settings.get("dtype", "fp32"))
    model, L = stage.model, stage.model.seq_len
    steps = max(1, round(settings["tokens"] / (settings["batch_size"] * L)))
    warmup = max(1, round(settings["warmup_fraction"] * steps))
    flops_per_step = transformer_train_flops(model, settings["batch_size"])
    optimizer = adamw(model, settings["lr"], settings["weight_decay"])
    curve_steps = sorted({max(1, round(f * steps)) for f in CURVE_FRACTIONS})
    curve, seconds = [], 0.0
    bar = tqdm(range(steps), desc=f"depth {depth}", leave=False, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        loss = stage.train_step(step, optimizer, lr_at(step, settings["lr"], warmup, steps), grad_clip=1.0)["loss"]
        seconds += time.perf_counter() - t0
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if step + 1 in curve_steps:  # a point of the loss-vs-compute curve, on a test subset
            ce = stage.evaluate(settings["curve_images"])
            curve.append({"step": step + 1, "flops": (step + 1) * flops_per_step, "loss": ce["ce"],
                          "loss_last": ce["ce_per_scale"][-1]})
    final = stage.evaluate()  # eval_images of the test split
    return {"depth": depth, "width": model.cfg.dim, "heads": model.cfg.heads, "params": model.num_params(),
            "steps": steps, "tokens": steps * settings["batch_size"] * L, "flops": steps * flops_per_step,
            "train_seconds": round(seconds, 1), "loss": final["ce"], "loss_last": final["ce_per_scale"][-1],
            "loss_per_scale": final["ce_per_scale"], "unigram": final["unigram"],
            "unigram_last": final["unigram_per_scale"][-1], "curve": curve}


def summarize(rows):
    """The power-law fits of a finished study (needs two sizes or more)."""
    params = [r["params"] for r in rows]
    frontier = pareto_frontier([(p["flops"], p["loss"]) for r in rows for p in r["curve"]])
    frontier_last = pareto_frontier([(p["flops"], p["loss_last"]) for r in rows for p in r["curve"]])
    fits = {"loss_vs_params": fit_power_law(params, [r["loss"] for r in rows]),
            "loss_last_vs_params": fit_power_law(params, [r["loss_last"] for r in rows])}
    for name, points in (("loss_vs_compute", frontier), ("loss_last_vs_compute", frontier_last)):
        if len(points) >= 2:
            fit = fit_power_law(*zip(*points))
            fits[name] = {"b": fit.pop("a"), "beta": fit.pop("alpha"), **fit, "frontier": points}  # same law, C for N
    return fits


def log_spaced(lo, hi, n=51):
    """n points from lo to hi, evenly spaced on a log axis (where a fitted law is drawn)."""
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def save_plot(result, path=None):
    """Left: test loss against parameters, with the fits. Right: each size's test loss
    against training compute, the Pareto frontier and its fit. Returns the figure."""
    rows, fits = result["rows"], result["fits"]
    fig = Figure(figsize=(12, 4.6))  # no pyplot: a notebook shows it with display(fig)
    left, right = fig.subplots(1, 2)
    params = [r["params"] for r in rows]
    for key, name, marker in (("loss", "avg", "o"), ("loss_last", "last", "s")):
        fit = fits[f"{key}_vs_params"]
        points = left.plot(params, [r[key] for r in rows], marker, label=f"L_{name} (test)")[0]
        xs = log_spaced(min(params), max(params))
        left.plot(xs, [(fit["a"] * x) ** -fit["alpha"] for x in xs], "--", color=points.get_color(),
                  label=f"fit (a·N)^−α: α = {fit['alpha']:.3f}, R² {fit['r2']:.3f}  (paper: α ≈ {PAPER_ALPHA[name]})")
    left.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="test cross-entropy (nats/token)",
             title="loss against model size, equal tokens")
    left.legend(fontsize=8)
    colors = matplotlib.colormaps["viridis"]([i / max(1, len(rows) - 1) for i in range(len(rows))])
    for r, color in zip(rows, colors):
        right.plot([p["flops"] for p in r["curve"]], [p["loss"] for p in r["curve"]], "-o", ms=3, color=color,
                   label=f"depth {r['depth']} ({r['params'] / 1e6:.2g} M)")
    if "loss_vs_compute" in fits:
        fit = fits["loss_vs_compute"]
        cs = [c for c, _ in fit["frontier"]]
        xs = log_spaced(min(cs), max(cs))
        right.plot(xs, [(fit["b"] * c) ** -fit["beta"] for c in xs], "k--",
                   label=f"frontier fit (b·C)^−β: β = {fit['beta']:.3f}, R² {fit['r2']:.3f}")
    right.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="test L_avg (subset)",
              title="loss against compute")
    right.legend(fontsize=8)
    for ax in (left, right):  # losses span less than a factor 2: plain numbers read better than 10^x
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=110)
    return fig


def run_study(settings, data, device, out_path, fresh=False, command="", progress=print):
    """Train every depth in settings["depths"] not already in out_path; returns the result dict."""
    tokenizer = load_checkpoint(settings["tokenizer"], "tokenizer")
    if len(tokenizer["model_config"]["scales"]) < 2:
        raise ValueError(f"--tokenizer {settings['tokenizer']} has one scale (an AR tokenizer); the study needs VAR's "
                         "multi-scale tokenizer: python train.py --stage tokenizer")
    out_path = Path(out_path)
    result = {"settings": settings, "rows": []}
    if out_path.is_file() and not fresh:
        saved = json.loads(out_path.read_text())
        same = {k: v for k, v in saved["settings"].items() if k != "depths"} == \
               {k: v for k, v in settings.items() if k != "depths"}
        if not same:
            raise ValueError(f"{out_path} holds a study with other settings; pass --fresh to replace it, "
                             "or --out to write elsewhere")
        result["rows"] = saved["rows"]  # every finished size stays, asked for this time or not
        result["wall_seconds"] = saved.get("wall_seconds", 0.0)
    done = {r["depth"] for r in result["rows"]}
    result["settings"] = {**settings, "depths": sorted(done | set(settings["depths"]))}
    result["machine"], result["command"] = describe_machine(device), command
    started = time.perf_counter() - sum(r["wall_seconds"] for r in result["rows"])

    def save():
        if len(result["rows"]) >= 2:
            result["fits"] = summarize(result["rows"])
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        save_json(result, out_path)

    for depth in settings["depths"]:
        if depth in done:
            progress(f"depth {depth}: already in {out_path}, kept")
            continue
        t0 = time.perf_counter()
        row = train_one_size(depth, settings, tokenizer, data, device)
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        result["rows"] = sorted(result["rows"] + [row], key=lambda r: r["depth"])
        save()  # a finished size is never lost
        progress(f"depth {depth}: {row['params'] / 1e6:.3f} M params, {row['steps']} steps, "
                 f"{row['flops'] / 1e12:.2f} TFLOP, {row['wall_seconds'] / 60:.1f} min: test L_avg {row['loss']:.4f}, "
                 f"L_last {row['loss_last']:.4f}")
    if "fits" not in result and len(result["rows"]) >= 2:  # nothing left to train: the fits of what is there
        result["fits"] = summarize(result["rows"])
    return result


def print_table(result):
    print(f"{'depth':>5} {'width':>5} {'params':>10} {'steps':>6} {'PFLOP':>8} {'min':>6} {'L_avg':>7} {'L_last':>7}")
    for r in result["rows"]:
        print(f"{r['depth']:5d} {r['width']:5d} {r['params']:10,d} {r['steps']:6d} {r['flops'] / 1e15:8.4f} "
              f"{r['wall_seconds'] / 60:6.1f} {r['loss']:7.4f} {r['loss_last']:7.4f}")
    fits = result.get("fits", {})
    for key, name in (("loss_vs_params", "avg"), ("loss_last_vs_params", "last")):
        if key in fits:
            f = fits[key]
            print(f"L_{name:4s} = ({f['a']:.3g}·N)^-{f['alpha']:.3f}   R² {f['r2']:.3f}   "
                  f"(paper: α ≈ {PAPER_ALPHA[name]})")
    for key, name in (("loss_vs_compute", "avg"), ("loss_last_vs_compute", "last")):
        if key in fits:
            f = fits[key]
            print(f"L_{name:4s} = ({f['b']:.3g}·C)^-{f['beta']:.3f}   R² {f['r2']:.3f}   "
                  f"(Pareto frontier, {len(f['frontier'])} points)")


def parse_depths(text):
    try:
        depths = sorted({int(d) for d in text.split(",")})
    except ValueError:
        depths = []
    if len(depths) < 2 or depths[0] < 1:
        raise ValueError(f"--depths {text}: give two or more positive depths, e.g. 1,2,3,4,5,6")
    return depths


def main(argv=None):
    sigterm_like_ctrl_c()  # SIGTERM ends the study as Ctrl-C does: finished sizes kept, one line, exit 130
    p = OneLineParser(prog="python -m minivar.studies.scaling", description=__doc__.split("\n\n")[0], epilog=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="out/tokenizer.pt",
                   help="a multi-scale tokenizer checkpoint written by train.py (default: out/tokenizer.pt)")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (default: ./data)")
    p.add_argument("--depths", default="1,2,3,4,5,6",
                   help="the sizes: depth d has width (width-per-depth)·d and d heads (default: 1,2,3,4,5,6)")
    p.add_argument("--width-per-depth", type=positive_int, default=32, help="width = this × depth (default: 32, "
                                                                          "a head dim of 32)")
    p.add_argument("--tokens", type=positive, default=5e6, help="training tokens per size (default: 5e6, about "
                                                                "1 h for depths 1…6 on 2 CPU cores)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="sequences per step, every size (default: 32)")
    p.add_argument("--lr", type=positive, default=1e-3, help="peak learning rate, every size (default: 1e-3)")
    p.add_argument("--eval-images", type=positive_int, default=10_000,
                   help="test images for the final losses (default: 10000)")
    p.add_argument("--curve-images", type=positive_int, default=2000,
                   help="test images for each point of the loss curves (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="fp32, or bf16 autocast; auto: bf16 on a CUDA GPU "
                                                                   "that has it, else fp32 (default: auto)")
    p.add_argument("--out", default="scaling.json", help="results JSON; the plot goes beside it as .png "
                                                         "(default: scaling.json)")
    p.add_argument("--fresh", action="store_true", help="start over instead of continuing the study in --out")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
        settings = {"depths": parse_depths(args.depths), "width_per_depth": args.width_per_depth,
                    "tokens": int(args.tokens), "batch_size": args.batch_size, "lr": args.lr, "weight_decay": 0.05,
                    "decayed": "weight matrices",  # (not every parameter, as before: a study of those cannot continue)
                    "warmup_fraction": 0.08, "eval_images": args.eval_images, "curve_images": args.curve_images,
                    "seed": args.seed, "tokenizer": str(args.tokenizer), "dtype": choose_dtype(args.dtype, device)[0]}
        torch.set_float32_matmul_precision("high")
        data = load_cifar10(args.data_dir, "train"), load_cifar10(args.data_dir, "test", download=False)
        command = "python -m minivar.studies.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
        result = run_study(settings, data, device, args.out, fresh=args.fresh, command=command)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished sizes are kept in {args.out}; run the same command to continue",
              file=sys.stderr)
        sys.exit(130)
    print_table(result)
    if "fits" in result:
        save_plot(result, Path(args.out).with_suffix(".png"))
        print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""What one *training* step costs against resolution: AR versus VAR, dense mask versus FlexAttention.

    python -m minivar.studies.training_cost                 # CPU defaults, n = 8..64: 15-30 min on 2 idle cores
    python -m minivar.studies.training_cost --device cuda --batch-sizes 8,64 --dim 256 --depth 6

complexity.py measures what *generating* costs; this is the other half. Training runs the
whole sequence at once under the mask: AR's n² tokens under the causal mask, VAR's Σ s_k²
≈ 2.7·n² tokens (complexity.var_scales) under the block-causal one. The variants:

    ar_causal   AR, SDPA with is_causal=True (its kernels skip the tiles above the diagonal)
    var_dense   VAR, SDPA with the dense L×L boolean mask (the reference): all L² pairs computed
    var_flex    VAR, FlexAttention with a BlockMask: 128×128 tiles the mask rules out are skipped
    ar_flex     AR under FlexAttention (only if asked for with --attention)

Counted per image, forward+backward = 3 × forward: the pairs the mask allows and those the
kernel computes (dense: L²; flex: every tile not entirely masked; causal: the allowed ones),
at 4·D FLOPs per pair and layer; linear layers and head at 2 FLOPs per weight and token.

Measured on random-weight models, each (variant, n, batch) in a fresh process: the median
seconds of a training step (forward, loss, backward, AdamW) and of a no_grad forward, and
their peak tensor memory above what was live before (CUDA's max_memory_allocated; on CPU the
allocations torch.profiler records, in time order, not the RSS the allocator blurs). A run
predicted to exceed --max-run-s or --max-memory-gib (from the variant's previous n, scaled by
counted work) is skipped with the reason, as is all after --budget-s. FlexAttention has no
backward on CPU in torch 2.13: there var_flex's training step is skipped, its forward measured.
"""
import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from minivar.ar import AR
from minivar.flex_attention import flex_unavailable, use_flex
from minivar.studies.bench import peak_bytes, timed
from minivar.studies.complexity import block_sizes, fit_slope, parse_ints, var_scales
from minivar.studies.cost_report import MEASURED, print_training_table, save_training_plot
from minivar.training.checkpoint import save_json
from minivar.training.cli import OneLineParser, positive, positive_int, sigterm_like_ctrl_c
from minivar.training.device import DTYPES, autocast, choose_dtype, describe_machine, pick_device
from minivar.var import VAR, VARConfig

VARIANTS = {"ar_causal": ("ar", "sdpa"), "var_dense": ("var", "sdpa"), "var_flex": ("var", "flex"),
            "ar_flex": ("ar", "flex")}  # name -> (model, VARConfig.attention)
TILE = 128  # FlexAttention's BlockMask tile side (its default)
SKIPS = ("train_skipped", "forward_skipped")  # why one half of a run was not measured (FlexAttention on CPU)


def count(variant, n, dim, depth, vocab=512, mlp_ratio=4, ratio=1.25):
    """Work of one forward+backward for one image (see the top)."""
    sizes = block_sizes(variant, n, ratio)
    block_L = list(itertools.chain.from_iterable([k] * b for k, b in enumerate(sizes)))
    L, prefix, allowed = len(block_L), 0, 0
    for b in sizes:  # a block's b queries see every key up to its end
        prefix += b
        allowed += b * prefix
    if variant.endswith("dense"):
        computed = L * L
    elif variant.endswith("flex"):  # a tile runs unless its first key is in a later block than its last query
        spans = [(i, min(i + TILE, L)) for i in range(0, L, TILE)]
        computed = sum((q1 - q0) * (k1 - k0) for q0, q1 in spans for k0, k1 in spans
                       if block_L[k0] <= block_L[q1 - 1])
    else:
        computed = allowed
    per_pair = 3 * 4 * dim * depth  # q·k and the weighted sum of v, 2·D multiply-adds; ×3 with the backward
    linear = 3 * (2 * (4 + 2 * mlp_ratio) * dim * dim * depth + 2 * dim * vocab) * L
    return {"tokens": L, "allowed_pairs": allowed, "computed_pairs": computed, "density": allowed / L**2,
            "attention_flops": per_pair * allowed, "computed_attention_flops": per_pair * computed,
            "linear_flops": linear, "total_flops": linear + per_pair * allowed,
            "computed_total_flops": linear + per_pair * computed}


def memory_estimate(variant, n, batch, dim, depth, vocab=512, ratio=1.25):
    """Rough bytes of a training step's activations (~20 floats per token and width per layer,
    3 of logits) plus the float copy SDPA makes of a dense mask: only used to scale a measured
    peak to the next n, and to refuse a first run that obviously cannot fit."""
    L = sum(block_sizes(variant, n, ratio))
    return 4 * batch * L * (20 * dim * depth + 3 * vocab) + (8 * L * L if variant.endswith("dense") else 0)


def run_one(variant, n, batch, dim, depth, heads, ratio, device, repeats, dtype="fp32"):
    """Time and memory of a training step and of a forward pass (see the top); one process each."""
    kind, attention = VARIANTS[variant]
    cfg = VARConfig(scales=(n,) if kind == "ar" else var_scales(n, ratio), dim=dim, depth=depth, heads=heads,
                    attention=attention)
    model = (AR if kind == "ar" else VAR)(cfg).to(device)
    if attention == "flex":
        use_flex(model)
    L = model.seq_len
    x = (torch.randint(cfg.vocab_size, (batch, L - 1), device=device) if kind == "ar"
         else torch.randn(batch, L - 1, cfg.latent_dim, device=device))
    labels, targets = torch.randint(10, (batch,), device=device), torch.randint(cfg.vocab_size, (batch, L)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = model(x, labels, targets)[1]
        loss.backward()
        opt.step()

    @torch.no_grad()
    def forward():
        with autocast(device, dtype):
            model(x, labels)

    row = dict.fromkeys(MEASURED + SKIPS)
    for mode, fn in (("forward", forward), ("train", train_step)):
        why = flex_unavailable(device, need_grad=mode == "train") if attention == "flex" else None
        if why:
            row[f"{mode}_skipped"] = why
            continue
        model.train(mode == "train")
        row[f"{mode}_s"] = timed(fn, repeats, warmup=1, device=device)  # the warm-up compiles FlexAttention
        row[f"{mode}_peak_mib"] = peak_bytes(fn, device) / 2**20 if device.type in ("cpu", "cuda") else None
    why = flex_unavailable(device, need_grad=False) if attention == "flex" else None
    if why:  # compiling failed during the run: what ran was the dense path, which is not what this row names
        return {"skipped": why}
    # the whole process's peak resident memory, for context (compilers and Python objects included)
    return {**row, "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10}


def run_isolated(job, timeout_s):
    """run_one in a fresh Python process; its row, or {"skipped": why} if it died or ran too long."""
    cmd = [sys.executable, "-m", "minivar.studies.training_cost", "--worker", json.dumps(job)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"skipped": f"killed after {timeout_s:.0f} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        killed = " (killed: out of memory?)" if done.returncode < 0 else ""
        return {"skipped": f"failed with exit code {done.returncode}{killed}: {last[-200:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(grids, batch_sizes, variants, dim, depth, heads, ratio, device, max_run_s, max_memory_gib, budget_s,
            isolate=True, progress=True, dtype="fp32"):
    """Every (n, batch, variant) that fits, smallest first (see the top for the skip rules)."""
    rows, start, last = [], time.perf_counter(), {}  # last: (variant, batch) -> its last measured row
    for n, batch, variant in itertools.product(grids, batch_sizes, variants):
        work = lambda m: count(variant, m, dim, depth, ratio=ratio)["computed_total_flops"]
        mem = lambda m: memory_estimate(variant, m, batch, dim, depth, ratio=ratio)
        row = {"variant": variant, "n": n, "batch": batch, "tokens": sum(block_sizes(variant, n, ratio)),
               "predicted_s": None, "predicted_peak_mib": mem(n) / 2**20, **dict.fromkeys(MEASURED + SKIPS)}
        prev = last.get((variant, batch))
        if prev:  # scale the previous n's measurement by the counted work
            t0, m0 = prev["train_s"] or prev["forward_s"], prev["train_peak_mib"] or prev["forward_peak_mib"]
            row["predicted_s"] = t0 * work(n) / work(prev["n"])
            if m0:
                row["predicted_peak_mib"] = m0 * mem(n) / mem(prev["n"])
        left = budget_s - (time.perf_counter() - start)
        if left <= 0:
            row["skipped"] = "time budget spent (--budget-s)"
        elif row["predicted_s"] is not None and row["predicted_s"] > max_run_s:
            row["skipped"] = f"predicted {row['predicted_s']:.3g} s per step > --max-run-s {max_run_s:g}"
        elif row["predicted_peak_mib"] > max_memory_gib * 1024:
            row["skipped"] = f"predicted {row['predicted_peak_mib'] / 1024:.1f} GiB > --max-memory-gib " \
                             f"{max_memory_gib:g}"
        else:
            repeats = 3 if row["predicted_s"] is None or row["predicted_s"] < 2 else 1
            job = dict(variant=variant, n=n, batch=batch, dim=dim, depth=depth, heads=heads, ratio=ratio,
                       device=str(device), repeats=repeats, dtype=dtype)
            # a run holds ~7 steps (warm-up, timing, memory; training and forward), plus start-up and compiling
            row.update(run_isolated(job, min(left, 10 * max_run_s + 180)) if isolate
                       else run_one(**{**job, "device": device}))
            if row.get("train_s") or row.get("forward_s"):
                last[(variant, batch)] = row
        row.setdefault("skipped", None)
        rows.append(row)
        if progress:
            done = ", ".join(f"{k} {row[k]:.3f}" for k in ("train_s", "forward_s") if row.get(k))
            print(f"  {variant:9s} n={n:2d} batch {batch:3d}: {done or 'skipped: ' + str(row['skipped'])}", flush=True)
    return rows


def study(grids, batch_sizes, variants, dim, depth, heads, ratio, device, max_run_s, max_memory_gib, budget_s,
          isolate=True, progress=True, dtype="fp32"):
    """measure() and summarize(), with the settings and the machine: what the JSON file holds."""
    t0 = time.perf_counter()
    rows = measure(grids, batch_sizes, variants, dim, depth, heads, ratio, device, max_run_s, max_memory_gib, budget_s,
                   isolate, progress, dtype)
    return {"dtype": dtype, "grids": grids, "batch_sizes": batch_sizes, "variants": variants, "dim": dim, "depth": depth,
            "heads": heads, "ratio": ratio, "max_run_s": max_run_s, "max_memory_gib": max_memory_gib,
            "budget_s": budget_s, "var_scales": {str(n): var_scales(n, ratio) for n in grids}, "measured": rows,
            **summarize(rows, grids, variants, dim, depth, ratio), "machine": describe_machine(device),
            "wall_s": time.perf_counter() - t0}


RATIOS = [("var_dense", "ar_causal", "train_s"), ("var_dense", "var_flex", "train_s"),  # a over b, of a key
          ("var_dense", "var_flex", "forward_s"), ("var_flex", "var_dense", "train_peak_mib"),
          ("var_flex", "var_dense", "forward_peak_mib")]


def summarize(rows, grids, variants, dim, depth, ratio):
    """Counts and their slopes against n; slopes of measured time and memory; VAR/AR and dense/flex ratios."""
    counted = {v: {n: count(v, n, dim, depth, ratio=ratio) for n in grids} for v in variants}
    keys = ("attention_flops", "computed_attention_flops", "total_flops", "computed_total_flops", "tokens")
    counted_slopes = {v: {k: fit_slope(grids, [counted[v][n][k] for n in grids]) for k in keys}
                      for v in variants if len(grids) > 1}  # a slope needs two sizes
    at = {(r["variant"], r["n"], r["batch"]): r for r in rows}
    got = lambda v, n, b, key: (at.get((v, n, b)) or {}).get(key)
    measured_slopes, ratios = {}, []
    for v, b, key in itertools.product(variants, sorted({r["batch"] for r in rows}), MEASURED):
        ns = [n for n in grids if got(v, n, b, key)]
        if len(ns) >= 3:  # fewer points would not make a slope worth printing
            measured_slopes.setdefault(f"{v}_b{b}", {})[key] = {"slope": fit_slope(ns, [got(v, n, b, key) for n in ns]),
                                                                "grids": ns}
    for n, b in sorted({(r["n"], r["batch"]) for r in rows}):
        found = {f"{v}_over_{w}_{key}": got(v, n, b, key) / got(w, n, b, key) for v, w, key in RATIOS
                 if got(v, n, b, key) and got(w, n, b, key)}
        if found:
            ratios.append({"n": n, "batch": b, **found})
    return {"counted": {v: {str(n): c for n, c in cs.items()} for v, cs in counted.items()},
            "counted_slopes": counted_slopes, "measured_slopes": measured_slopes, "ratios": ratios}


def int_list(text):
    try:
        return parse_ints(text, "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers separated by commas, e.g. 8,16") from None


def variant_list(text):
    names = [v for v in text.split(",") if v]
    if not names or any(v not in VARIANTS for v in names):
        raise argparse.ArgumentTypeError(f"{text!r}: give some of {','.join(VARIANTS)} separated by commas")
    return list(dict.fromkeys(names))


def auto_or_positive(text):
    return text if text == "auto" else positive(text)


def main(argv=None):
    p = OneLineParser(prog="python -m minivar.studies.training_cost",
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                      description="AR vs VAR training cost against resolution: counted FLOPs, measured time and memory")
    p.add_argument("--grids", type=int_list, default="8,12,16,24,32,48,64", help="token-map sides n")
    p.add_argument("--batch-sizes", type=int_list, default="1,4", help="batch sizes to time")
    p.add_argument("--attention", type=variant_list, default="ar_causal,var_dense,var_flex",
                   help=f"variants, from {','.join(VARIANTS)}")
    p.add_argument("--dim", type=positive_int, default=128, help="width of the random-weight models")
    p.add_argument("--depth", type=positive_int, default=4, help="their number of blocks")
    p.add_argument("--heads", type=positive_int, default=2, help="their attention heads")
    p.add_argument("--ratio", type=positive, default=1.25, help="VAR scale schedule: ratio between sides")
    p.add_argument("--max-run-s", type=positive, default=60.0, help="skip a step predicted to take longer")
    p.add_argument("--max-memory-gib", type=auto_or_positive, default="auto",
                   help="skip a step predicted to need more; auto: half the RAM, or 90%% of the GPU's memory")
    p.add_argument("--budget-s", type=positive, default=2400.0, help="stop measuring after this many seconds in all")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="fp32, or bf16 autocast (auto: bf16 on CUDA)")
    p.add_argument("--out-dir", default="results", help="where training_cost_<device>.json and .png go")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, in its own process (run_isolated)
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(run_one(**{**job, "device": torch.device(job["device"])})))
        return
    if args.dim % args.heads or args.ratio <= 1:
        p.error(f"need --dim ({args.dim}) divisible by --heads ({args.heads}) and --ratio ({args.ratio:g}) above 1")
    try:
        device = pick_device(args.device)
        dtype = choose_dtype(args.dtype, device)[0]
    except ValueError as e:
        p.error(str(e))
    if args.max_memory_gib == "auto":
        total = (torch.cuda.get_device_properties(device).total_memory * 0.9 if device.type == "cuda"
                 else os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2)
        args.max_memory_gib = total / 2**30
    sigterm_like_ctrl_c()  # SIGTERM ends the study as Ctrl-C does: one line, exit status 130
    print(f"training cost on {device}: n {args.grids}, batches {args.batch_sizes}, {args.attention}")
    try:
        result = study(args.grids, args.batch_sizes, args.attention, args.dim, args.depth, args.heads, args.ratio,
                       device, args.max_run_s, args.max_memory_gib, args.budget_s, dtype=dtype)
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    result["command"] = " ".join([p.prog, *(sys.argv[1:] if argv is None else argv)])
    print_training_table(result)
    out = Path(args.out_dir) / f"training_cost_{device.type}"
    save_json(result, out.with_suffix(".json"))
    save_training_plot(result, out.with_suffix(".png"))
    print(f"wrote {out}.json and .png ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

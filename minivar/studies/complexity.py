"""What generating one n×n token map costs: raster AR versus VAR, counted and measured.

    python -m minivar.studies.complexity                       # defaults: a few minutes on a laptop CPU
    python -m minivar.studies.complexity --grids 4,8,16,32 --batch-sizes 1,256 --device cuda

Four samplers. A sampler runs a sequence cut into blocks b_1..b_K (AR: n²
blocks of one token; VAR: one block of s_k² tokens per scale), one block per
sequential step. With P_k = b_1 + ... + b_k tokens known after step k:

    with a KV cache      step k runs its b_k new tokens; they attend to P_k keys
    without a cache      step k reruns all P_k tokens under the block-causal mask

so the attended (query, key) pairs are Σ_k b_k·P_k with a cache and Σ_k Σ_{j≤k} b_j·P_j
without. For AR (b = 1, K = n²) that is ≈ n⁴/2 and ≈ n⁶/6: the paper's O(n⁶) is AR
*without* a cache. VAR's scales grow geometrically, so both its sums are O(n⁴), and
its win is the number of steps, K = O(log n), not the attention FLOPs. It processes
Σ s_k² tokens (2.4× n² for the default scales), so its linear layers do more work.

Counted: attention pairs and FLOPs, linear-layer FLOPs, tokens processed, sequential
steps. Measured: wall time of each sampler's real `generate` on random-weight models of
equal width and depth, within a time budget. Both get the same care: preallocated KV
caches, the same blocks and sampler code (ar.py only changes what differs).
Counts are per image; with CFG (used in the measurements) every count doubles for both.
"""
import math
import sys
import time
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from minivar.ar import AR
from minivar.quantizer import MultiScaleQuantizer, split_scales
from minivar.sampling import guided_logits, sample_tokens
from minivar.studies.cost_report import print_generation_table, save_generation_plot
from minivar.training.checkpoint import save_json
from minivar.training.cli import OneLineParser, positive, positive_int, sigterm_like_ctrl_c
from minivar.training.device import DTYPES, autocast, choose_dtype, describe_machine, pick_device
from minivar.var import VAR, VARConfig

SAMPLERS = ("ar_nocache", "ar_cache", "var_nocache", "var_cache")


def var_scales(n, ratio=1.25):
    """VAR's roughly geometric schedule ending at side n: walk down from n, dividing by
    `ratio` and shrinking by at least 1 each step. ratio 1.25 gives VAR's own schedules:
    8 -> (1, 2, 3, 4, 5, 6, 8); 16 -> (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)."""
    sides = [n]
    while sides[-1] > 1:
        sides.append(max(1, min(sides[-1] - 1, round(sides[-1] / ratio))))
    return tuple(reversed(sides))


def block_sizes(sampler, n, ratio=1.25):
    """The tokens each sequential step predicts, in order."""
    return [1] * (n * n) if sampler.startswith("ar") else [s * s for s in var_scales(n, ratio)]


def count(sampler, n, dim=256, depth=6, vocab=512, mlp_ratio=4, ratio=1.25):
    """Work to generate one n×n token map, counted from the block sizes (see the top)."""
    blocks = block_sizes(sampler, n, ratio)
    cached = sampler.endswith("_cache")
    prefix = 0  # P_k
    pairs = tokens = prefix_pairs = 0
    for b in blocks:
        prefix += b
        prefix_pairs += b * prefix  # pairs inside the first P_k tokens: Σ_{j≤k} b_j·P_j
        pairs += b * prefix if cached else prefix_pairs
        tokens += b if cached else prefix
    linear_per_token = 2 * (4 + 2 * mlp_ratio) * dim * dim * depth  # qkv, proj, MLP: 2 FLOPs per weight
    attention_flops = 4 * dim * depth * pairs  # q·k and the weighted sum of v: 2·D multiply-adds per pair
    head_flops = 2 * dim * vocab * sum(blocks)  # logits only for the newest block at each step
    return {"steps": len(blocks), "tokens": tokens, "attention_pairs": pairs, "attention_flops": attention_flops,
            "linear_flops": linear_per_token * tokens + head_flops,
            "total_flops": attention_flops + linear_per_token * tokens + head_flops}


def fit_slope(ns, values):
    """Least-squares slope of log(value) against log(n): the exponent p in value ∝ n^p."""
    xs, ys = [math.log(n) for n in ns], [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


@torch.no_grad()
def generate_without_cache(model, quantizer, labels_B, cfg_scale=1.5, generator=None):
    """`model.generate` without a KV cache: every step reruns the whole prefix through the
    model's full pass (under its mask) and keeps the newest block's logits. The same generator
    gives the same samples; what differs is the work, which is what the "no cache" samplers
    measure. (A block's inputs come from earlier blocks' tokens only, so the tokens not drawn
    yet, zeros here, never reach the logits kept.)"""
    labels_2B = torch.cat([labels_B, torch.full_like(labels_B, model.cfg.num_classes)])  # [class; null]
    tokens_BL = labels_B.new_zeros(len(labels_B), model.seq_len)
    start = 0
    for k, size in enumerate(model.block_sizes):
        x = model.teacher_forcing_inputs(quantizer, tokens_BL)[:, :start + size - 1]  # positions 1..end−1
        logits_2BlV = model(torch.cat([x, x]), labels_2B)[0][:, start:]  # the whole prefix, again
        logits_BlV = guided_logits(logits_2BlV, model.guidance_weight(k, cfg_scale))
        tokens_BL[:, start:start + size] = sample_tokens(logits_BlV, generator=generator)
        start += size
    return split_scales(tokens_BL, model.cfg.scales)


def random_model(sampler, n, dim, depth, heads, ratio, device):
    """(model, quantizer) with random weights for an n×n map; VAR's quantizer updates f̂ between scales."""
    scales = (n,) if sampler.startswith("ar") else var_scales(n, ratio)
    cfg = VARConfig(scales=scales, dim=dim, depth=depth, heads=heads)
    model = (AR if sampler.startswith("ar") else VAR)(cfg).to(device).eval()
    quantizer = MultiScaleQuantizer(cfg.vocab_size, cfg.latent_dim, scales).to(device).eval()
    return model, quantizer


def time_generation(model, quantizer, batch, use_cache, device, repeats):
    """Seconds of each of `repeats` `generate` calls (CFG on, as in real sampling)."""
    labels = torch.arange(batch, device=device) % 10
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        sample = model.generate if use_cache else partial(generate_without_cache, model)
        sample(quantizer, labels, cfg_scale=1.5, generator=torch.Generator(device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def measure(grids, batch_sizes, dim, depth, heads, ratio, device, max_run_s, budget_s, progress=True):
    """Wall time of every sampler at every (n, batch) that fits: the median of 2 to 3 repeats,
    and their spread ((slowest − fastest) / median), which says how steady the machine was.
    A run is skipped, with the reason in its row, when its time, predicted from the same
    sampler's previous grid scaled by the counted FLOPs, exceeds max_run_s, or when the whole
    budget is spent."""
    rows, start = [], time.perf_counter()
    last = {}  # (sampler, batch) -> (n, seconds) of the last measured run
    jobs = [(n, b, s) for n in grids for b in batch_sizes for s in SAMPLERS]
    with torch.no_grad():
        # warm up: first calls pay for allocations and, on a GPU, kernel loading
        model, quantizer = random_model("var_cache", grids[0], dim, depth, heads, ratio, device)
        time_generation(model, quantizer, 1, True, device, repeats=2)
        for n, batch, sampler in tqdm(jobs, desc="timing generation", dynamic_ncols=True, disable=not progress):
            predicted = None
            if (sampler, batch) in last:
                n0, t0 = last[(sampler, batch)]
                flops = lambda m: count(sampler, m, dim, depth, ratio=ratio)["total_flops"]
                predicted = t0 * flops(n) / flops(n0)
            row = {"sampler": sampler, "n": n, "batch": batch, "seconds": None, "predicted_s": predicted}
            if time.perf_counter() - start > budget_s:
                row["skipped"] = "time budget spent"
            elif predicted is not None and predicted > max_run_s:
                row["skipped"] = f"predicted {predicted:.0f} s > --max-run-s {max_run_s:g}"
            else:
                model, quantizer = random_model(sampler, n, dim, depth, heads, ratio, device)
                repeats = 3 if predicted is None or predicted < 1.0 else 2
                times = sorted(time_generation(model, quantizer, batch, sampler.endswith("_cache"), device, repeats))
                row["seconds"] = times[len(times) // 2]
                row["spread"] = (times[-1] - times[0]) / row["seconds"]
                last[(sampler, batch)] = (n, row["seconds"])
            rows.append(row)
    return rows


def summarize(rows, grids, batch_sizes, dim, depth, ratio):
    """Counted work per (sampler, n), slopes of counts and of measured times, and the
    AR/VAR time ratios at each measured (n, batch)."""
    counted = {s: {n: count(s, n, dim, depth, ratio=ratio) for n in grids} for s in SAMPLERS}
    counted_slopes = {s: {key: fit_slope(grids, [counted[s][n][key] for n in grids])
                          for key in ("attention_flops", "total_flops", "tokens", "steps")} for s in SAMPLERS}
    seconds = {(r["sampler"], r["n"], r["batch"]): r["seconds"] for r in rows if r["seconds"] is not None}
    measured_slopes = {}
    for s in SAMPLERS:
        for b in batch_sizes:
            ns = [n for n in grids if (s, n, b) in seconds]
            if len(ns) >= 3:  # fewer points would not make a slope worth printing
                measured_slopes[f"{s}_b{b}"] = {"slope": fit_slope(ns, [seconds[(s, n, b)] for n in ns]), "grids": ns}
    ratios = []
    for n in grids:
        for b in batch_sizes:
            var = seconds.get(("var_cache", n, b))
            if var:
                ar, ar_nocache = seconds.get(("ar_cache", n, b)), seconds.get(("ar_nocache", n, b))
                ratios.append({"n": n, "batch": b, "ar_cache_over_var_cache": ar / var if ar else None,
                               "ar_nocache_over_var_cache": ar_nocache / var if ar_nocache else None})
    return {"counted": {s: {str(n): c for n, c in v.items()} for s, v in counted.items()},
            "counted_slopes": counted_slopes, "measured_slopes": measured_slopes, "ratios": ratios}


def parse_ints(text, flag):
    try:
        values = [int(v) for v in text.split(",")]
        assert values and all(v >= 1 for v in values)
        return sorted(set(values))
    except (ValueError, AssertionError):
        raise ValueError(f"{flag} {text}: give positive integers separated by commas, e.g. 4,8,16") from None


def main(argv=None):
    p = OneLineParser(prog="python -m minivar.studies.complexity",
                      description="AR vs VAR generation cost: counted FLOPs and steps, measured time")
    p.add_argument("--grids", default="4,8,12,16,24,32", help="token-map sides n to count and time "
                                                              "(default: 4,8,12,16,24,32)")
    p.add_argument("--batch-sizes", default="1,64", help="batch sizes to time (default: 1,64)")
    p.add_argument("--dim", type=positive_int, default=256, help="width of the random-weight models (default: 256)")
    p.add_argument("--depth", type=positive_int, default=6, help="their number of blocks (default: 6)")
    p.add_argument("--heads", type=positive_int, default=4, help="their attention heads (default: 4)")
    p.add_argument("--ratio", type=positive, default=1.25,
                   help="VAR's scale schedule: ratio between consecutive sides (default: 1.25, VAR's own)")
    p.add_argument("--max-run-s", type=positive, default=20.0,
                   help="skip a timing predicted to take longer than this many seconds (default: 20)")
    p.add_argument("--budget-s", type=positive, default=200.0,
                   help="stop timing after this many seconds in all (default: 200)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="fp32, or bf16 autocast; auto: bf16 on a CUDA GPU "
                                                                   "that has it, else fp32 (default: fp32)")
    p.add_argument("--out-dir", default="results", help="where complexity_<device>.json and .png go (default: results)")
    sigterm_like_ctrl_c()  # SIGTERM ends the study as Ctrl-C does: one line, exit status 130
    args = p.parse_args(argv)
    try:
        grids, batch_sizes = parse_ints(args.grids, "--grids"), parse_ints(args.batch_sizes, "--batch-sizes")
        if args.dim % args.heads or args.ratio <= 1:
            raise ValueError("need --dim divisible by --heads and --ratio > 1")
        device = pick_device(args.device)
        dtype = choose_dtype(args.dtype, device)[0]
    except ValueError as e:
        sys.exit(f"error: {e}")
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("high")
    t0 = time.perf_counter()
    try:
        with autocast(device, dtype):
            rows = measure(grids, batch_sizes, args.dim, args.depth, args.heads, args.ratio, device, args.max_run_s,
                           args.budget_s)
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    result = {"dtype": dtype, "grids": grids, "batch_sizes": batch_sizes, "dim": args.dim, "depth": args.depth, "heads": args.heads,
              "ratio": args.ratio, "var_scales": {str(n): var_scales(n, args.ratio) for n in grids}, "measured": rows,
              **summarize(rows, grids, batch_sizes, args.dim, args.depth, args.ratio)}
    result["machine"] = describe_machine(device)
    result["wall_s"] = time.perf_counter() - t0
    result["command"] = "python -m minivar.studies.complexity " + " ".join(argv if argv is not None else sys.argv[1:])
    print_generation_table(result)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_json(result, out / f"complexity_{device.type}.json")
    save_generation_plot(result, out / f"complexity_{device.type}.png")
    print(f"wrote {out / f'complexity_{device.type}.json'} and .png ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()

"""Benchmarks: measure, print a table, write JSON. Tests check correctness; these measure.

    python -m minivar.studies.bench tokenizer --ckpt out/tokenizer.pt
    python -m minivar.studies.bench var --ckpt out/var.pt
    python -m minivar.studies.bench var --random          # speed only, random weights, no data needed
    python -m minivar.studies.bench step --stage var --preset cpu --dtype fp32,bf16   # train.py's step, each way

step: seconds of one optimizer step of a train.py stage at a preset's sizes, in each --dtype,
the dtypes taking turns (random weights and images: speed only, no data needed). What
--dtype auto decides by, measured with care.

tokenizer: test PSNR (final and after each scale), codebook usage per scale, parameters,
encode+decode images/s.
var: test cross-entropy per scale beside each scale's unigram entropy; training
throughput (tokens/s) and achieved FLOP/s as a fraction of an fp32 matmul peak measured
in the same run; the cost of a whole training step relative to the transformer's own
forward+backward; sampling images/s at batch 64 and latency at batch 1, with and without
the KV cache.
"""
import argparse
import itertools
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from minivar.data import DataError, iterate_in_order, load_cifar10
from minivar.quantizer import flatten_scales
from minivar.studies.complexity import generate_without_cache
from minivar.tokenizer import psnr
from minivar.training.checkpoint import CheckpointError, frozen_tokenizer, load_checkpoint, load_generator, save_json
from minivar.training.cli import OneLineParser, positive_int, sigterm_like_ctrl_c
from minivar.training.device import autocast, describe_machine, pick_device
from minivar.training.evaluation import test_cross_entropy
from minivar.training.tokens import tokenize
from minivar.var import VAR, VARConfig


def timed(fn, repeats, warmup=1, device=None):
    """Median seconds of fn() over `repeats` runs, after `warmup` runs."""
    times = []
    for i in range(warmup + repeats):
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_bytes(fn, device):
    """Most tensor memory live at once during fn(), above what was live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    return max(itertools.accumulate((b for _, b in events), initial=0))


def matmul_peak_flops(device, n=2048, repeats=5, dtype=torch.float32):
    """FLOP/s of one large square matmul in `dtype`: the ceiling a model's matmuls can reach."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, repeats, warmup=2, device=device)


@torch.no_grad()
def bench_tokenizer(args, device):
    ckpt = load_checkpoint(args.ckpt, "tokenizer")
    tok = frozen_tokenizer(ckpt["model_config"], ckpt["model"]).to(device)
    images, labels = load_cifar10(args.data_dir, "test", download=False)
    images, labels = images[:args.n], labels[:args.n]
    K, V = len(tok.cfg.scales), tok.cfg.vocab_size
    per_scale, hits_KV = torch.zeros(K), torch.zeros(K, V)
    for x, _ in iterate_in_order(images, labels, 500, device):
        idx_list = tok.encode(x)
        for k, latent in enumerate(tok.quantizer.cumulative_latents(idx_list)):
            per_scale[k] += psnr(tok.decoder(latent).float(), x).sum().cpu()
            hits_KV[k] += torch.bincount(idx_list[k].flatten().cpu(), minlength=V)
    x = next(iterate_in_order(images, labels, 256, device))[0]
    seconds = timed(lambda: tok.decode(tok.encode(x)), repeats=5, device=device)
    psnr_per_scale = (per_scale / len(images)).tolist()
    return {"psnr": psnr_per_scale[-1], "psnr_per_scale": psnr_per_scale,
            "usage_per_scale": (hits_KV > 0).float().mean(1).tolist(), "scales": list(tok.cfg.scales),
            "params": tok.num_params(), "encode_decode_images_per_s": len(x) / seconds,
            "test_images": len(images), "train_step": ckpt["step"], "train_minutes": ckpt["train_seconds"] / 60}


def var_from_args(args, device):
    """(model, tokenizer): from --ckpt, or random weights with --random."""
    if args.random:
        from minivar.tokenizer import Tokenizer, TokenizerConfig
        torch.manual_seed(0)
        scales = args.scales  # only the quantizer is used: any latent side
        tok = Tokenizer(TokenizerConfig(scales=scales)).eval().requires_grad_(False).to(device)
        return VAR(VARConfig(scales=scales, dim=args.dim, depth=args.depth, heads=args.heads)).to(device), tok
    return load_generator(args.ckpt, device)


def transformer_train_flops(model, batch):
    """FLOPs of one forward+backward: 6 per weight per token for the matmuls, plus
    attention's two L×L×D products, times 3. Not counted: embedding tables (lookups, no
    matmul) and the adaLN layers, which run once per sequence on the class, not per token."""
    L, D = model.seq_len, model.cfg.dim
    matmul_params = sum(m.weight.numel() for name, m in model.named_modules()
                        if isinstance(m, torch.nn.Linear) and ".ada." not in name)
    attention = 2 * 2 * L * L * D * model.cfg.depth
    return batch * (6 * matmul_params * L + 3 * attention)


def bench_var(args, device):
    model, tok = var_from_args(args, device)
    result = {"params": model.num_params(), "config": asdict(model.cfg)}
    if not args.random and args.data_dir:  # quality: test cross-entropy per scale
        test = load_cifar10(args.data_dir, "test", download=False)
        tokens = tokenize(tok, test[0][:args.n], device).to(device)
        model.eval()
        result.update(test_cross_entropy(model, tok, tokens, test[1][:args.n].to(device), device))

    # Training throughput: the transformer alone, and a whole stage step (inputs built from tokens).
    B = args.batch
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx_list = [torch.randint(model.cfg.vocab_size, (B, s, s), device=device) for s in model.cfg.scales]
    targets, labels = flatten_scales(idx_list), torch.randint(10, (B,), device=device)
    x = model.teacher_forcing_inputs(tok.quantizer, targets)

    precision = autocast(device, args.dtype)  # as train.py's --dtype

    def transformer_only():
        with precision:
            _, loss = model(x, labels, targets)
        model.zero_grad(set_to_none=True)
        loss.backward()

    def stage_step():
        with precision:
            inputs = model.teacher_forcing_inputs(tok.quantizer, targets)
            _, loss = model(inputs, labels, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    peak = matmul_peak_flops(device, dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    t_model = timed(transformer_only, args.repeats, warmup=2, device=device)
    t_step = timed(stage_step, args.repeats, warmup=2, device=device)
    flops = transformer_train_flops(model, B)
    result.update(train_batch=B, dtype=args.dtype, train_tokens_per_s=B * model.seq_len / t_step,
                  matmul_peak_gflops=peak / 1e9,
                  achieved_gflops=flops / t_model / 1e9, fraction_of_peak=flops / t_model / peak,
                  stage_step_over_transformer=t_step / t_model)

    if args.skip_sampling:
        return result
    # Sampling, with and without the KV cache; the same seed must give the same images.
    model.eval()
    for batch in (64, 1):
        labels = torch.arange(batch, device=device) % 10
        for cache in (True, False):
            sample = model.generate if cache else partial(generate_without_cache, model)
            run = lambda: sample(tok.quantizer, labels, cfg_scale=1.5, generator=torch.Generator(device).manual_seed(0))
            t = timed(run, args.repeats, device=device)
            key = f"sample_b{batch}_{'cache' if cache else 'nocache'}"
            result[key + "_s"] = t
            result[key + "_images_per_s"] = batch / t
        key = f"sample_b{batch}"
        result[f"{key}_cache_speedup"] = result[f"{key}_nocache_s"] / result[f"{key}_cache_s"]
    return result


def bench_step(args, device):
    """Median seconds of train.py's step of one stage (preset sizes, random weights and images) in each
    dtype; the dtypes take turns, so that a machine's drift weighs on each alike."""
    import tempfile

    from minivar.tokenizer import Tokenizer, TokenizerConfig
    from minivar.training.presets import run_settings
    from minivar.training.sharpness import FeatureClassifier, PerceptualConfig
    from minivar.training.stages import ARStage, PerceptualStage, TokenizerStage, VARStage
    cfg, model_cfg = run_settings(args.stage, {"preset": args.preset})
    g = torch.Generator().manual_seed(0)
    data = [(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10)
            for n in (2000, 250)]  # speed only: random images
    extra = {}
    if args.stage == "tokenizer" and model_cfg.perceptual_weight > 0:  # its loss runs a classifier: a random one
        net_cfg = PerceptualConfig()
        extra["perceptual"] = {"model_config": asdict(net_cfg), "model": FeatureClassifier(net_cfg.widths).state_dict()}
    if args.stage in ("var", "ar"):
        tok_cfg = TokenizerConfig(**run_settings("tokenizer", {"preset": args.preset})[1].__dict__)
        extra["tokenizer"] = {"tokenizer_config": asdict(tok_cfg), "tokenizer": Tokenizer(tok_cfg).state_dict()}
        model_cfg = type(model_cfg)(**{**asdict(model_cfg), "scales": tok_cfg.scales, "vocab_size": tok_cfg.vocab_size,
                                       "latent_dim": tok_cfg.latent_dim})
    stages = {"perceptual": PerceptualStage, "tokenizer": TokenizerStage, "var": VARStage, "ar": ARStage}
    with tempfile.TemporaryDirectory() as folder:
        cfg = type(cfg)(**{**asdict(cfg), "out_dir": folder, "eval_images": 250})
        stage = stages[args.stage](cfg, model_cfg, *data, device, **extra)
    optimizer = torch.optim.AdamW(stage.model.parameters(), lr=1e-4)
    times = {dtype: [] for dtype in args.dtype}
    for i in range(args.repeats + 1):  # the first round warms up, and is not counted
        for dtype in args.dtype:
            stage.set_dtype(dtype)
            t = timed(lambda: stage.train_step(i, optimizer, 1e-4, 1.0, log=False), 1, warmup=0, device=device)
            times[dtype].append(t)
    seconds = {dtype: sorted(ts[1:])[len(ts[1:]) // 2] for dtype, ts in times.items()}
    result = {"stage": args.stage, "preset": args.preset, "batch": cfg.batch_size, "seconds_per_step": seconds,
              "all_seconds": times}
    if len(seconds) == 2:
        result["bf16_over_fp32"] = seconds["bf16"] / seconds["fp32"]
    return result


def main(argv=None):
    p = OneLineParser(prog="python -m minivar.studies.bench", description=__doc__.split("\n\n")[0], epilog=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["tokenizer", "var", "step"], help="what to measure")
    p.add_argument("--ckpt", help="the checkpoint to measure (var: a var or ar checkpoint)")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (default: ./data)")
    p.add_argument("--n", type=positive_int, default=10_000,
                   help="test images for the quality figures (default: 10000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--out", help="JSON file (default: bench_<what>.json)")
    p.add_argument("--random", action="store_true", help="var: random weights, speed only (no checkpoint, no data)")
    p.add_argument("--dim", type=positive_int, default=VARConfig.dim,
                   help=f"--random: width (default: {VARConfig.dim})")
    p.add_argument("--depth", type=positive_int, default=VARConfig.depth,
                   help=f"--random: blocks (default: {VARConfig.depth})")
    p.add_argument("--heads", type=positive_int, default=VARConfig.heads,
                   help=f"--random: attention heads (default: {VARConfig.heads})")
    p.add_argument("--scales", default="1,2,3,4,5,6,8", help="--random: the scale schedule, e.g. 1,2,3,4,6,8,11,16 "
                                                             "(default: 1,2,3,4,5,6,8)")
    p.add_argument("--batch", type=positive_int, default=64, help="var: training batch (default: 64)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats; the median is kept (default: 5)")
    p.add_argument("--skip-sampling", action="store_true", help="var: training figures only")
    p.add_argument("--dtype", default="fp32", help="var: fp32, or the training step under bf16 autocast against a "
                   "bf16 matmul peak; step: one or both, comma-separated (default: fp32)")
    p.add_argument("--stage", choices=("perceptual", "tokenizer", "var", "ar"), default="var", help="step: the stage")
    p.add_argument("--preset", choices=("gpu", "gpu-long", "cpu", "tiny"), default="cpu", help="step: its sizes")
    sigterm_like_ctrl_c()  # SIGTERM ends a measurement as Ctrl-C does: one line, exit status 130
    args = p.parse_args(argv)
    args.dtype = args.dtype.split(",") if args.what == "step" else args.dtype
    if any(d not in ("fp32", "bf16") for d in ([args.dtype] if isinstance(args.dtype, str) else args.dtype)):
        p.error(f"--dtype {','.join(args.dtype) if isinstance(args.dtype, list) else args.dtype}: fp32 or bf16")
    try:
        args.scales = tuple(int(s) for s in args.scales.split(","))
        assert all(a < b for a, b in zip(args.scales, args.scales[1:])) and args.scales[0] >= 1
    except (ValueError, AssertionError):
        p.error(f"--scales {args.scales}: give increasing positive sides, e.g. 1,2,3,4,5,6,8")
    if args.what != "step" and not args.random and not args.ckpt:
        p.error(f"{args.what}: give --ckpt PATH" + (" (or --random for speed alone)" if args.what == "var" else ""))
    try:
        device = pick_device(args.device)
        torch.manual_seed(0)
        result = {"tokenizer": bench_tokenizer, "var": bench_var, "step": bench_step}[args.what](args, device)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    result["machine"] = describe_machine(device)
    result["command"] = "python -m minivar.studies.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    for key, value in result.items():
        if key not in ("config", "machine", "command", "all_seconds"):
            print(f"{key:34s} " + (" ".join(f"{v:.3f}" for v in value) if isinstance(value, list) else
                                   ", ".join(f"{k} {v:.3f}" for k, v in value.items() if not isinstance(v, list))
                                   if isinstance(value, dict)
                                   else f"{value:.4g}" if isinstance(value, float) else str(value)))
    out = Path(args.out or f"bench_{args.what}.json")
    save_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""FID of a checkpoint against the CIFAR-10 test split: print it, write JSON.

    python -m minivar.evaluate --ckpt out/var.pt --n 10000 --cfg 1.5     # a generator (var or ar)
    python -m minivar.evaluate --ckpt out/tokenizer.pt --n 10000         # rFID: the tokenizer's floor

A generator draws n images, classes balanced (n/10 of each); a tokenizer reconstructs
the first n test images: no generator using it can get closer to the data than that.
The reference is always the whole test split, its statistics cached next to the
checkpoint (or in --cache-dir). Needs the optional FID extra (see minivar/metrics.py).
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minivar.checkpoint import CheckpointError, load_checkpoint
from minivar.data import DataError, iterate_in_order, load_cifar10, to_uint8
from minivar.device import autocast, pick_device
from minivar.metrics import InceptionFeatures, MetricsError, features, frechet_distance, reference_statistics, statistics
from minivar.stages import frozen_tokenizer, load_generator


def feature_network(device):
    """The network FID is computed with (the tests swap in a small stand-in)."""
    return InceptionFeatures(device)


@torch.no_grad()
def generated_images(model, tokenizer, n, args, device):
    """n uint8 images, classes 0..9 in turn, in batches, from one seeded generator."""
    labels = torch.arange(n, device=device) % model.cfg.num_classes
    generator = torch.Generator(device).manual_seed(args.seed)
    out = []
    for i in tqdm(range(0, n, args.batch_size), desc="sampling", leave=False, dynamic_ncols=True):
        with autocast(device):
            idx_list = model.generate(tokenizer.quantizer, labels[i:i + args.batch_size], cfg=args.cfg,
                                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                      generator=generator)
            out.append(to_uint8(tokenizer.decode(idx_list).float()).cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstructed_images(tokenizer, images_uint8, labels, args, device):
    out = []
    for x, _ in tqdm(iterate_in_order(images_uint8, labels, args.batch_size, device), desc="reconstructing",
                     leave=False, dynamic_ncols=True, total=-(-len(images_uint8) // args.batch_size)):
        out.append(to_uint8(tokenizer.decode(tokenizer.encode(x)).float()).cpu())
    return torch.cat(out)


def evaluate(args):
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.ckpt)
    kind = ckpt["kind"]
    if kind not in ("tokenizer", "var", "ar"):
        raise CheckpointError(f"{args.ckpt} is a {kind} checkpoint; evaluate takes a tokenizer, var or ar checkpoint")
    test_images, test_labels = load_cifar10(args.data_dir, "test", download=False)
    if not 2 <= args.n <= (len(test_images) if kind == "tokenizer" else 10**7):
        raise ValueError(f"--n {args.n}: need at least 2 (and for a tokenizer at most the {len(test_images)} test images)")
    network = feature_network(device)
    t0 = time.perf_counter()
    mu_ref, sigma_ref = reference_statistics(network, test_images, args.cache_dir or Path(args.ckpt).parent,
                                             "cifar10-test", device)
    t1 = time.perf_counter()
    if kind == "tokenizer":
        tokenizer = frozen_tokenizer(ckpt["model_config"], ckpt["model"]).to(device)
        images = reconstructed_images(tokenizer, test_images[:args.n], test_labels[:args.n], args, device)
        settings = {"what": "rFID: reconstructions of the first n test images"}
    else:
        model, tokenizer = load_generator(args.ckpt, device)
        images = generated_images(model, tokenizer, args.n, args, device)
        settings = {"what": "FID of class-balanced samples", "cfg": args.cfg, "top_k": args.top_k,
                    "top_p": args.top_p, "temperature": args.temperature, "seed": args.seed}
    t2 = time.perf_counter()
    fid = frechet_distance(*statistics(features(network, images, device)), mu_ref, sigma_ref)
    t3 = time.perf_counter()
    return {"fid": fid, "kind": kind, "n": args.n, "reference": f"CIFAR-10 test split ({len(test_images)} images)",
            "feature_network": type(network).__name__, **settings,
            "seconds": {"reference_features": t1 - t0, "images": t2 - t1, "features_and_fid": t3 - t2}}


def main(argv=None):
    p = argparse.ArgumentParser(description="FID of a checkpoint against the CIFAR-10 test split")
    p.add_argument("--ckpt", required=True, help="a tokenizer (rFID), var or ar checkpoint")
    p.add_argument("--n", type=int, default=10_000, help="images to generate (or reconstruct)")
    p.add_argument("--cfg", type=float, default=1.5), p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0), p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--cache-dir", help="reference statistics cache (default: the checkpoint's folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="JSON file (default: <ckpt>_fid<n>.json)")
    args = p.parse_args(argv)
    try:
        if args.batch_size < 1 or args.top_k < 0 or not 0 < args.top_p <= 1 or args.temperature <= 0:
            raise ValueError("need --batch-size >= 1, --top-k >= 0, 0 < --top-p <= 1 and --temperature > 0")
        result = evaluate(args)
    except (CheckpointError, DataError, MetricsError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    result["machine"] = {"device": str(pick_device(args.device)), "cpu": platform.processor() or platform.machine(),
                         "threads": torch.get_num_threads(), "torch": torch.__version__}
    result["command"] = "python -m minivar.evaluate " + " ".join(map(str, argv if argv is not None else sys.argv[1:]))
    for key, value in result.items():
        if key not in ("machine", "command"):
            print(f"{key:18s} {value:.3f}" if isinstance(value, float) else f"{key:18s} {value}")
    out = Path(args.out or f"{Path(args.ckpt).with_suffix('')}_fid{args.n}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

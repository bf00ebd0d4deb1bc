"""FID of a checkpoint against the CIFAR-10 test split: print it, write JSON.

    python -m minivar.studies.evaluate --ckpt out/var.pt --n 10000 --cfg 1.5     # a generator (var or ar)
    python -m minivar.studies.evaluate --ckpt out/var.pt --n 5000 --cfg 1,1.5,2,3  # FID against cfg
    python -m minivar.studies.evaluate --ckpt out/var.pt --n 5000 --reject 4     # best of 4 by the implicit classifier
    python -m minivar.studies.evaluate --ckpt out/tokenizer.pt --n 10000         # rFID: the tokenizer's floor
    python -m minivar.studies.evaluate --train --n 10000                         # the metric's own floor
    python -m minivar.studies.evaluate --images samples.npz                      # any uint8 N×3×32×32 array

A generator draws n images, classes balanced (n/10 of each); a tokenizer reconstructs
the first n test images: no generator using it can get closer to the data than that.
--train scores the first n training images: real images, so what is left is the
metric's own noise at this n, the floor under every model. The reference is always the
whole test split, its statistics cached next to the checkpoint (or in --cache-dir).
Needs the optional FID extra (see minivar/studies/metrics.py).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minivar.applications.rejection import sample
from minivar.data import DataError, iterate_in_order, load_cifar10, to_uint8
from minivar.studies.metrics import (
    InceptionFeatures,
    MetricsError,
    features,
    frechet_distance,
    reference_statistics,
    statistics,
)
from minivar.training.checkpoint import CheckpointError, load_checkpoint
from minivar.training.device import autocast, describe_machine, pick_device
from minivar.training.stages import frozen_tokenizer, generator_from_checkpoint


def feature_network(device):
    """The network FID is computed with (the tests swap in a small stand-in)."""
    return InceptionFeatures(device)


@torch.no_grad()
def generated_images(model, tokenizer, n, cfg, args, device):
    """n uint8 images, classes 0..9 in turn, in batches, from one seeded generator."""
    labels = torch.arange(n, device=device) % model.cfg.num_classes
    generator = torch.Generator(device).manual_seed(args.seed)
    sampling = dict(cfg=cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator)
    out = []
    for i in tqdm(range(0, n, args.batch_size), desc="sampling", leave=False, dynamic_ncols=True):
        with autocast(device):  # --reject N: best of N by the implicit classifier (rejection.py)
            idx_list = sample(model, tokenizer.quantizer, labels[i:i + args.batch_size], args.reject, **sampling)
            out.append(to_uint8(tokenizer.decode(idx_list).float()).cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstructed_images(tokenizer, images_uint8, labels, args, device):
    out = []
    for x, _ in tqdm(iterate_in_order(images_uint8, labels, args.batch_size, device), desc="reconstructing",
                     leave=False, dynamic_ncols=True, total=-(-len(images_uint8) // args.batch_size)):
        out.append(to_uint8(tokenizer.decode(tokenizer.encode(x)).float()).cpu())
    return torch.cat(out)


def load_images(path):
    """A uint8 N×3×H×W array from an .npz file (its only array, or the one named 'images')."""
    try:
        with np.load(path) as npz:
            images = npz["images"] if "images" in npz.files else npz[npz.files[0]]
    except (OSError, ValueError, IndexError, KeyError) as e:
        raise ValueError(f"--images {path}: not a readable .npz file ({type(e).__name__})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"--images {path}: need uint8 N×3×H×W, got {images.dtype} {images.shape}")
    return torch.from_numpy(images)


def evaluate(args):
    """FID rows (one per cfg for a generator, else one) of whatever the flags name."""
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.ckpt) if args.ckpt else None
    kind = "train" if args.train else "images" if args.images else ckpt["kind"]
    if kind not in ("tokenizer", "var", "ar", "train", "images"):
        raise CheckpointError(f"{args.ckpt} is a {kind} checkpoint; evaluate takes a tokenizer, var or ar checkpoint")
    test_images, test_labels = load_cifar10(args.data_dir, "test", download=False)
    images = load_images(args.images) if kind == "images" else None
    n = len(images) if kind == "images" else args.n
    if not 2 <= n <= {"tokenizer": len(test_images), "train": 50_000}.get(kind, 10**7):
        raise ValueError(f"--n {n}: need at least 2 (at most the {len(test_images)} test images for a tokenizer, "
                         f"the 50000 training images for --train)")
    network = feature_network(device)
    t0 = time.perf_counter()
    cache_dir = args.cache_dir or (Path(args.ckpt).parent if args.ckpt else Path(args.data_dir))
    mu_ref, sigma_ref = reference_statistics(network, test_images, cache_dir, "cifar10-test", device)
    reference_s = time.perf_counter() - t0

    def row(images, started, **settings):
        """One FID and what it was of; `started` is when making the images began."""
        t1 = time.perf_counter()
        fid = frechet_distance(*statistics(features(network, images, device)), mu_ref, sigma_ref)
        return {"fid": fid, **settings, "seconds": {"images": t1 - started, "features_and_fid": time.perf_counter() - t1}}

    rows, started = [], time.perf_counter()
    if kind == "tokenizer":
        tokenizer = frozen_tokenizer(ckpt["model_config"], ckpt["model"]).to(device)
        rows.append(row(reconstructed_images(tokenizer, test_images[:n], test_labels[:n], args, device), started,
                        what="rFID: reconstructions of the first n test images"))
    elif kind == "train":
        rows.append(row(load_cifar10(args.data_dir, "train", download=False)[0][:n], started,
                        what="the first n training images: the floor of the metric at this n"))
    elif kind == "images":
        rows.append(row(images, started, what=f"the images in {args.images}"))
    else:
        model, tokenizer = generator_from_checkpoint(ckpt, args.ckpt, device)
        for cfg in args.cfg:
            started = time.perf_counter()
            rows.append(row(generated_images(model, tokenizer, n, cfg, args, device), started,
                            what="FID of class-balanced samples", cfg=cfg, top_k=args.top_k, top_p=args.top_p,
                            temperature=args.temperature, reject=args.reject, seed=args.seed))
    return {"kind": kind, "n": n, "reference": f"CIFAR-10 test split ({len(test_images)} images)",
            "feature_network": type(network).__name__, "reference_seconds": reference_s, "rows": rows}


def main(argv=None):
    p = argparse.ArgumentParser(description="FID of a checkpoint against the CIFAR-10 test split")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", help="a tokenizer (rFID), var or ar checkpoint")
    what.add_argument("--train", action="store_true", help="the first n training images (the metric's floor)")
    what.add_argument("--images", help=".npz file holding uint8 images N×3×H×W")
    p.add_argument("--n", type=int, default=10_000, help="images to generate (or reconstruct)")
    p.add_argument("--cfg", default="1.5", help="guidance weight; several (1,1.5,2) give one FID each")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0), p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reject", type=int, default=1, help="draw N candidates per image, keep the best by the "
                                                          "model's implicit classifier (1: plain sampling)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--data-dir", default="./data")
    p.add_argument("--cache-dir", help="reference statistics cache (default: the checkpoint's folder)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="JSON file (default: <ckpt>_fid<n>.json)")
    args = p.parse_args(argv)
    try:
        try:
            args.cfg = [float(c) for c in args.cfg.split(",")]
        except ValueError:
            raise ValueError(f"--cfg {args.cfg}: need numbers separated by commas, e.g. 1.5 or 1,1.5,2") from None
        if args.reject < 1:
            raise ValueError(f"--reject {args.reject}: need 1 (plain sampling) or more candidates per image")
        if args.batch_size < 1 or args.top_k < 0 or not 0 < args.top_p <= 1 or args.temperature <= 0:
            raise ValueError("need --batch-size >= 1, --top-k >= 0, 0 < --top-p <= 1 and --temperature > 0")
        result = evaluate(args)
    except (CheckpointError, DataError, MetricsError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    result["machine"] = describe_machine(pick_device(args.device))
    result["command"] = "python -m minivar.studies.evaluate " + " ".join(map(str, argv if argv is not None else sys.argv[1:]))
    print(f"{result['kind']}, n = {result['n']}, against the {result['reference']}, "
          f"{result['feature_network']} features ({result['machine']['device']})")
    for r in result["rows"]:
        settings = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("fid", "what", "seconds"))
        print(f"  FID {r['fid']:8.3f}   {settings or r['what']}   ({sum(r['seconds'].values()):.0f} s)")
    stem = Path(args.ckpt).with_suffix("") if args.ckpt else Path(args.images).with_suffix("") if args.images else \
        Path(args.data_dir) / "cifar10-train"
    out = Path(args.out or f"{stem}_fid{result['n']}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

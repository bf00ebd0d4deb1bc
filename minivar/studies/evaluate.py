"""FID of a checkpoint against the CIFAR-10 test split: print it, write JSON.

    python -m minivar.studies.evaluate --ckpt out/var.pt --cfg-scale 1.5          # a generator (var or ar)
    python -m minivar.studies.evaluate --ckpt out/var.pt --n 2000 --cfg-scale 1,2,3 --top-k 0,100   # a sweep
    python -m minivar.studies.evaluate --ckpt out/var.pt --n 5000 --reject 4      # best of 4, implicit classifier
    python -m minivar.studies.evaluate --ckpt out/tokenizer.pt                    # rFID: the tokenizer's floor
    python -m minivar.studies.evaluate --train                                    # the metric's own floor
    python -m minivar.studies.evaluate --images samples.npz                       # any uint8 N×3×32×32 array

A generator draws n images, classes balanced (n/10 of each); a tokenizer reconstructs
the first n test images: no generator using it can get closer to the data than that.
--train scores the first n training images: real images, so what is left is the
metric's own noise at this n, the floor under every model. The reference is always the
whole test split, its statistics cached next to the checkpoint (or in --cache-dir).
Needs the optional FID extra (see minivar/studies/metrics.py).
"""
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minivar.applications.rejection import generate_best_of
from minivar.data import DataError, iterate_in_order, load_cifar10, to_uint8
from minivar.studies.metrics import (
    InceptionFeatures,
    MetricsError,
    features,
    frechet_distance,
    reference_statistics,
    statistics,
)
from minivar.training.checkpoint import (
    SAMPLING_SETTINGS,
    WEIGHTS,
    CheckpointError,
    frozen_tokenizer,
    generator_from_checkpoint,
    load_checkpoint,
    save_json,
    weights_used,
)
from minivar.training.cli import (
    OneLineParser,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
    probability,
    sigterm_like_ctrl_c,
)
from minivar.training.device import DTYPES, autocast, choose_dtype, describe_machine, pick_device


def feature_network(device):
    """The network FID is computed with (the tests swap in a small stand-in)."""
    return InceptionFeatures(device)


@torch.no_grad()
def generated_images(model, tokenizer, n, settings, args, device):
    """n uint8 images, classes 0..9 in turn, in batches, from one seeded generator."""
    labels = torch.arange(n, device=device) % model.cfg.num_classes
    sampling = dict(settings, generator=torch.Generator(device).manual_seed(args.seed))
    out = []
    for i in tqdm(range(0, n, args.batch_size), desc="sampling", leave=False, dynamic_ncols=True):
        batch = labels[i:i + args.batch_size]
        with autocast(device, args.dtype):
            if args.reject > 1:  # best of N by the implicit classifier (applications/rejection.py)
                idx_list, _ = generate_best_of(model, tokenizer.quantizer, batch, args.reject, **sampling)
            else:
                idx_list = model.generate(tokenizer.quantizer, batch, **sampling)
            out.append(to_uint8(tokenizer.decode(idx_list).float()).cpu())
    return torch.cat(out)


def sampling_grid(args):
    """Every combination of the sampling settings given (each flag may list several values)."""
    return [dict(zip(SAMPLING_SETTINGS, values))
            for values in itertools.product(*(getattr(args, k) for k in SAMPLING_SETTINGS))]


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
    args.dtype = choose_dtype(args.dtype, device)[0]
    ckpt = load_checkpoint(args.ckpt) if args.ckpt else None
    kind = "train" if args.train else "images" if args.images else ckpt["kind"]
    if kind not in ("tokenizer", "var", "ar", "train", "images"):
        raise CheckpointError(f"{args.ckpt} is a {kind} checkpoint; evaluate takes a tokenizer, var or ar checkpoint")
    test_images, test_labels = load_cifar10(args.data_dir, "test", download=False)
    images = load_images(args.images) if kind == "images" else None
    n = len(images) if kind == "images" else args.n
    if kind == "images" and n < 2:
        raise ValueError(f"--images {args.images} holds {n} image; FID needs at least 2")
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
        seconds = {"images": t1 - started, "features_and_fid": time.perf_counter() - t1}
        return {"fid": fid, **settings, "seconds": seconds}

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
        model, tokenizer = generator_from_checkpoint(ckpt, args.ckpt, device, args.weights)
        for settings in sampling_grid(args):
            started = time.perf_counter()
            rows.append(row(generated_images(model, tokenizer, n, settings, args, device), started,
                            what="FID of class-balanced samples", **settings, reject=args.reject, seed=args.seed,
                            weights=weights_used(ckpt, args.weights)))
    return {"kind": kind, "n": n, "reference": f"CIFAR-10 test split ({len(test_images)} images)",
            "feature_network": type(network).__name__, "reference_seconds": reference_s, "rows": rows}


def number_list(kind):
    """An argparse type: one value or several separated by commas, each checked by `kind`."""
    return lambda text: [kind(v) for v in text.split(",")]


def main(argv=None):
    sigterm_like_ctrl_c()  # a SIGTERM, even during the long reference statistics, ends like Ctrl-C: one line, 130
    p = OneLineParser(prog="python -m minivar.studies.evaluate",
                      description="FID of a checkpoint against the CIFAR-10 test split; prints it, writes JSON")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", help="a tokenizer (rFID of its reconstructions), var or ar checkpoint")
    what.add_argument("--train", action="store_true", help="score the first n training images: the metric's floor")
    what.add_argument("--images", help="score the images of an .npz file (uint8 N×3×H×W)")
    p.add_argument("--n", type=positive_int, default=10_000, help="images to generate, reconstruct or take (default: "
                                                                 "10000; FID reads higher for fewer)")
    sweep = "; several, comma-separated, give one FID each"
    p.add_argument("--cfg-scale", type=number_list(non_negative), default=[1.5],
                   help=f"guidance weight at the last scale (default: 1.5{sweep})")
    p.add_argument("--top-k", type=number_list(non_negative_int), default=[0],
                   help=f"keep the k most likely tokens, 0 for all (default: 0{sweep})")
    p.add_argument("--top-p", type=number_list(probability), default=[1.0],
                   help=f"nucleus mass, 1 for all (default: 1{sweep})")
    p.add_argument("--temperature", type=number_list(positive), default=[1.0], help=f"(default: 1{sweep})")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    p.add_argument("--reject", type=positive_int, default=1, help="draw N candidates per image, keep the best by the "
                                                                  "model's implicit classifier (default: 1, plain)")
    p.add_argument("--weights", choices=WEIGHTS, default="ema",
                   help="a generator's moving average of the weights (if it has one) or its raw weights (default: ema)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per batch (default: 250)")
    p.add_argument("--data-dir", default="./data", help="folder holding cifar-10-batches-py/ (default: ./data)")
    p.add_argument("--cache-dir", help="where the test split's feature statistics are cached (default: the "
                                       "checkpoint's folder)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="sampling in fp32 or under bf16 autocast; auto: bf16 "
                                                                   "on a CUDA GPU that has it, else fp32 (default: auto)")
    p.add_argument("--out", help="JSON file (default: <ckpt>_fid<n>.json beside the checkpoint)")
    args = p.parse_args(argv)
    try:
        result = evaluate(args)
        result["machine"] = describe_machine(pick_device(args.device))
        result["command"] = "python -m minivar.studies.evaluate " + " ".join(map(str, argv if argv is not None
                                                                                 else sys.argv[1:]))
        print(f"{result['kind']}, n = {result['n']}, against the {result['reference']}, "
              f"{result['feature_network']} features ({result['machine']['device']})")
        for r in result["rows"]:
            settings = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("fid", "what", "seconds"))
            print(f"  FID {r['fid']:8.3f}   {settings or r['what']}   ({sum(r['seconds'].values()):.0f} s)")
        stem = Path(args.ckpt).with_suffix("") if args.ckpt else Path(args.images).with_suffix("") if args.images \
            else Path(args.data_dir) / "cifar10-train"
        out = Path(args.out or f"{stem}_fid{result['n']}.json")
        save_json(result, out)
    except (CheckpointError, DataError, MetricsError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("\ninterrupted; no FID was written", file=sys.stderr)
        sys.exit(130)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

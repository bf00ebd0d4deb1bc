"""Draw class-conditional CIFAR-10 samples from a trained VAR (or AR baseline) checkpoint.

    python sample.py --ckpt out/var.pt --classes cat,dog,ship --n-per-class 8 --out grid.png
    python sample.py --ckpt out/var.pt --classes 0,1,2 --cfg 3 --top-k 200 --seed 1

Writes a PNG grid with one labelled row per class. The checkpoint carries both the
model and its tokenizer, so nothing else is needed.
"""
import argparse
import sys
from pathlib import Path

import torch

from minivar.checkpoint import CheckpointError
from minivar.data import CLASSES
from minivar.device import autocast, pick_device
from minivar.plots import save_sample_grid
from minivar.stages import load_generator


def parse_classes(text, num_classes):
    """'cat,dog' or '3,5' or 'all' -> class ids; a bad entry raises ValueError with the fix."""
    if text == "all":
        return list(range(num_classes))
    ids = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item.isdigit():
            if int(item) >= num_classes:
                raise ValueError(f"class id {item} is out of range: ids go from 0 to {num_classes - 1}")
            ids.append(int(item))
        elif item.lower() in CLASSES:
            ids.append(CLASSES.index(item.lower()))
        else:
            raise ValueError(f"unknown class '{item}': use ids 0-{num_classes - 1} or names: {', '.join(CLASSES)}")
    if not ids:
        raise ValueError("--classes is empty: give names or ids, comma-separated, or 'all'")
    return ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="out/var.pt", help="a var (or ar) checkpoint written by train.py")
    p.add_argument("--classes", default="all", help="comma-separated names or ids, or 'all'")
    p.add_argument("--n-per-class", type=int, default=8)
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance at the last scale (0: none)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="samples.png")
    args = p.parse_args(argv)
    try:
        if args.n_per_class < 1 or args.top_k < 0 or not 0 < args.top_p <= 1 or args.temperature <= 0:
            raise ValueError("need --n-per-class >= 1, --top-k >= 0, 0 < --top-p <= 1 and --temperature > 0")
        if Path(args.out).suffix.lower() != ".png":
            raise ValueError(f"--out {args.out}: the grid is written as PNG; give a .png path")
        device = pick_device(args.device)
        model, tokenizer = load_generator(args.ckpt, device)
        class_ids = parse_classes(args.classes, model.cfg.num_classes)
        labels = torch.tensor(class_ids, device=device).repeat_interleave(args.n_per_class)
        generator = torch.Generator(device).manual_seed(args.seed)
        with autocast(device):
            idx_list = model.generate(tokenizer.quantizer, labels, cfg=args.cfg, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, generator=generator)
            images = tokenizer.decode(idx_list).float()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        save_sample_grid(images, [CLASSES[c] for c in class_ids], args.n_per_class, args.out)
    except (CheckpointError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}: {len(class_ids)} classes × {args.n_per_class} samples, cfg {args.cfg}, seed {args.seed}")


if __name__ == "__main__":
    main()

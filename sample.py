"""Draw class-conditional CIFAR-10 samples from a trained VAR (or AR baseline) checkpoint.

    python sample.py --ckpt out/var.pt --classes cat,dog,ship --n-per-class 8 --out grid.png
    python sample.py --ckpt out/var.pt --classes 0,1,2 --cfg 3 --top-k 200 --seed 1
    python sample.py --ckpt out/var.pt --reject 4            # best of 4 by the implicit classifier

Zero-shot editing of a real image (VAR only; minivar/applications/editing.py):

    python sample.py --ckpt out/var.pt --edit inpaint --image 7 --box 8,8,24,24    # CIFAR test image 7
    python sample.py --ckpt out/var.pt --edit outpaint --image photo.png --classes cat
    python sample.py --ckpt out/var.pt --edit classedit --image 7 --classes dog,horse

Writes a PNG grid with one labelled row per class (editing: the source, the region, then
the edits). The checkpoint carries both the model and its tokenizer, so nothing else is
needed.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from minivar.applications.editing import MODES, edit, edit_region, edited_region
from minivar.applications.rejection import sample
from minivar.data import CLASSES, DataError, load_cifar10, to_float
from minivar.training.checkpoint import CheckpointError
from minivar.training.device import autocast, pick_device
from minivar.training.plots import save_sample_grid
from minivar.training.stages import load_generator


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


def load_source_image(spec, data_dir):
    """--image: a CIFAR-10 test index (its label too) or an image file (resized to 32×32; label None)."""
    if spec.isdigit():
        images, labels = load_cifar10(data_dir, "test", download=False)
        if int(spec) >= len(images):
            raise ValueError(f"--image {spec}: the test split has images 0 to {len(images) - 1}")
        return to_float(images[int(spec)][None]), int(labels[int(spec)])
    from PIL import Image  # Pillow comes with matplotlib
    try:
        picture = Image.open(spec).convert("RGB").resize((32, 32), Image.BICUBIC)
    except OSError as e:
        raise ValueError(f"--image {spec}: not a test index or a readable image file ({e})") from None
    return to_float(torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)[None]), None


def parse_box(text):
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ValueError(f"--box {text}: give x0,y0,x1,y1 in pixels (x1, y1 exclusive), e.g. 8,8,24,24")
    edit_region(box)  # checks the range
    return box


def edit_grid(model, tokenizer, args, device):
    """Rows of [source, the region greyed out, edits]: one row per class."""
    image, label = load_source_image(args.image, args.data_dir)
    box = parse_box(args.box)
    if args.edit == "classedit" or args.classes != "all":
        class_ids = parse_classes(args.classes, model.cfg.num_classes)
    elif label is None:
        raise ValueError("--image is a file: say which class it shows with --classes")
    else:
        class_ids = [label]
    image = image.to(device)
    labels = torch.tensor(class_ids, device=device).repeat_interleave(args.n_per_class)
    with autocast(device):
        edited, _, _ = edit(model, tokenizer, image.expand(len(labels), -1, -1, -1), labels, box, args.edit,
                            cfg=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            generator=torch.Generator(device).manual_seed(args.seed))
    shown = image[0].masked_fill(edited_region(box, args.edit).to(device)[None], 0.0)  # the region, grey
    rows = [torch.cat([image, shown[None], edited[i * args.n_per_class:(i + 1) * args.n_per_class].float()])
            for i in range(len(class_ids))]
    return torch.cat(rows), class_ids, args.n_per_class + 2


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
    p.add_argument("--reject", type=int, default=1, help="draw N candidates per image, keep the one the model's "
                                                          "implicit classifier rates best (1: plain sampling)")
    p.add_argument("--edit", choices=MODES, help="zero-shot editing of --image (VAR only)")
    p.add_argument("--image", help="--edit: a CIFAR-10 test index or an image file")
    p.add_argument("--box", default="8,8,24,24", help="--edit: the region x0,y0,x1,y1 in pixels (x1, y1 exclusive)")
    p.add_argument("--data-dir", default="./data", help="--edit: where CIFAR-10 is, for a test index")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="samples.png")
    args = p.parse_args(argv)
    try:
        if args.reject < 1:
            raise ValueError(f"--reject {args.reject}: need 1 (plain sampling) or more candidates per image")
        if args.edit and args.image is None:
            raise ValueError(f"--edit {args.edit} needs --image: a CIFAR-10 test index or an image file")
        if args.n_per_class < 1 or args.top_k < 0 or not 0 < args.top_p <= 1 or args.temperature <= 0:
            raise ValueError("need --n-per-class >= 1, --top-k >= 0, 0 < --top-p <= 1 and --temperature > 0")
        if Path(args.out).suffix.lower() != ".png":
            raise ValueError(f"--out {args.out}: the grid is written as PNG; give a .png path")
        device = pick_device(args.device)
        model, tokenizer = load_generator(args.ckpt, device)
        if args.edit:
            images, class_ids, per_row = edit_grid(model, tokenizer, args, device)
        else:
            class_ids, per_row = parse_classes(args.classes, model.cfg.num_classes), args.n_per_class
            labels = torch.tensor(class_ids, device=device).repeat_interleave(args.n_per_class)
            sampling = dict(cfg=args.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            generator=torch.Generator(device).manual_seed(args.seed))
            with autocast(device):
                idx_list = sample(model, tokenizer.quantizer, labels, args.reject, **sampling)
                images = tokenizer.decode(idx_list).float()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        save_sample_grid(images, [CLASSES[c] for c in class_ids], per_row, args.out)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    what = f"{args.edit} edits of image {args.image}" if args.edit else "samples"
    print(f"wrote {args.out}: {len(class_ids)} classes × {args.n_per_class} {what}, cfg {args.cfg}, seed {args.seed}")


if __name__ == "__main__":
    main()

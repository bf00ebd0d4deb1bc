"""Draw class-conditional CIFAR-10 samples from a trained VAR (or AR baseline) checkpoint.

    python sample.py                                          # your run in out/, else the shipped model
    python sample.py --classes cat,dog,ship --n-per-class 8 --out grid.png
    python sample.py --ckpt out/var.pt --classes 0,1,2 --cfg-scale 3 --top-k 200 --seed 1
    python sample.py --reject 4                               # best of 4 by the implicit classifier

Zero-shot editing of a real image (VAR only; minivar/applications/editing.py):

    python sample.py --edit inpaint --image 7 --box 8,8,24,24      # CIFAR-10 test image 7
    python sample.py --edit outpaint --image photo.png --classes cat
    python sample.py --edit classedit --image 7 --classes dog,horse

Writes a PNG grid with one labelled row per class (editing: the source, the region, then
the edits). A checkpoint carries the model, its tokenizer and, for the shipped one, the
sampling settings its FID sweep found best, which are then the defaults.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from minivar.applications.editing import MODES, edit, edit_region, edited_region
from minivar.applications.rejection import generate_best_of
from minivar.data import CLASSES, DataError, load_cifar10, to_float
from minivar.training.checkpoint import CheckpointError, generator_from_checkpoint, load_checkpoint
from minivar.training.cli import OneLineParser, non_negative, non_negative_int, positive, positive_int, probability
from minivar.training.device import autocast, pick_device
from minivar.training.plots import save_sample_grid
from minivar.training.workspace import generator_checkpoint

SAMPLING_DEFAULTS = {"cfg_scale": 1.5, "top_k": 0, "top_p": 1.0, "temperature": 1.0}  # for a checkpoint with none


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


def edit_grid(model, tokenizer, args, sampling, device):
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
        edited, _, _ = edit(model, tokenizer, image.expand(len(labels), -1, -1, -1), labels, box, args.edit, **sampling)
    shown = image[0].masked_fill(edited_region(box, args.edit).to(device)[None], 0.0)  # the region, grey
    rows = [torch.cat([image, shown[None], edited[i * args.n_per_class:(i + 1) * args.n_per_class].float()])
            for i in range(len(class_ids))]
    return torch.cat(rows), class_ids, args.n_per_class + 2


def parse_args(argv=None):
    p = OneLineParser(prog="python sample.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="a var (or ar) checkpoint written by train.py (default: out/var.pt if it exists, "
                                  "else checkpoints/var_cpu.pt, the model shipped with minivar)")
    p.add_argument("--classes", default="all", help="comma-separated names or ids, or 'all' (default: all)")
    p.add_argument("--n-per-class", type=positive_int, default=8, help="images per class, one row each (default: 8)")
    checkpoint_decides = "default: the checkpoint's recommended value if it has one, else {}"
    p.add_argument("--cfg-scale", type=non_negative,
                   help="classifier-free guidance weight at the last scale, 0 for none; negative weights would push "
                        "samples away from their class (" + checkpoint_decides.format(1.5) + ")")
    p.add_argument("--top-k", type=non_negative_int, help="keep the k most likely tokens, 0 for all ("
                                                          + checkpoint_decides.format(0) + ")")
    p.add_argument("--top-p", type=probability, help="nucleus sampling: keep the most likely tokens up to this "
                   "probability mass, 1 for all (" + checkpoint_decides.format(1) + ")")
    p.add_argument("--temperature", type=positive, help="divides the logits (" + checkpoint_decides.format(1) + ")")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws: the same seed gives the same "
                                                       "grid (default: 0)")
    p.add_argument("--reject", type=positive_int, default=1, help="draw N candidates per image, keep the one the "
                   "model's implicit classifier rates best (default: 1, plain sampling)")
    p.add_argument("--edit", choices=MODES, help="zero-shot editing of --image (VAR only)")
    p.add_argument("--image", help="--edit: a CIFAR-10 test index or an image file")
    p.add_argument("--box", default="8,8,24,24", help="--edit: the region x0,y0,x1,y1 in pixels, x1 and y1 "
                                                       "exclusive (default: 8,8,24,24)")
    p.add_argument("--data-dir", default="./data", help="--edit with a test index: the folder holding "
                                                        "cifar-10-batches-py/ (default: ./data)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)")
    p.add_argument("--out", default="samples.png", help="the PNG to write (default: samples.png)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.edit and args.image is None:
            raise ValueError(f"--edit {args.edit} needs --image: a CIFAR-10 test index or an image file")
        if Path(args.out).suffix.lower() != ".png":
            raise ValueError(f"--out {args.out}: the grid is written as PNG; give a .png path")
        device = pick_device(args.device)
        args.ckpt = args.ckpt or generator_checkpoint("out") or "out/var.pt"  # your run (./out), else the shipped one
        ckpt = load_checkpoint(args.ckpt)
        model, tokenizer = generator_from_checkpoint(ckpt, args.ckpt, device)
        recommended = {**SAMPLING_DEFAULTS, **ckpt.get("sampling", {})}
        settings = {k: recommended[k] if getattr(args, k) is None else getattr(args, k) for k in SAMPLING_DEFAULTS}
        sampling = dict(settings, generator=torch.Generator(device).manual_seed(args.seed))
        if args.edit:
            images, class_ids, per_row = edit_grid(model, tokenizer, args, sampling, device)
        else:
            class_ids, per_row = parse_classes(args.classes, model.cfg.num_classes), args.n_per_class
            labels = torch.tensor(class_ids, device=device).repeat_interleave(args.n_per_class)
            with autocast(device):
                if args.reject > 1:
                    idx_list, _ = generate_best_of(model, tokenizer.quantizer, labels, args.reject, **sampling)
                else:
                    idx_list = model.generate(tokenizer.quantizer, labels, **sampling)
                images = tokenizer.decode(idx_list).float()
        save_sample_grid(images, [CLASSES[c] for c in class_ids], per_row, args.out)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    what = f"{args.edit} edits of image {args.image}" if args.edit else "samples"
    shown = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in settings.items())
    print(f"wrote {args.out}: {len(class_ids)} classes × {args.n_per_class} {what} from {args.ckpt} ({shown}, "
          f"seed {args.seed})")


if __name__ == "__main__":
    main()

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
import os
import signal
import sys

if __name__ == "__main__":  # Ctrl-C (or SIGTERM) while torch loads (a second or two): quit quietly
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, lambda signum, frame: os._exit(130))  # (no exception inside a half-done import)

import re  # (the rest is imported after that handler, on purpose)
from pathlib import Path

import numpy as np
import torch
from PIL import Image  # Pillow comes with matplotlib

from minivar.applications.editing import MODES, edit, edit_region, edited_region
from minivar.applications.rejection import generate_best_of
from minivar.data import CLASSES, DataError, load_cifar10, to_float
from minivar.training.checkpoint import (
    WEIGHTS,
    CheckpointError,
    generator_from_checkpoint,
    load_checkpoint,
    weights_used,
)
from minivar.training.cli import (
    OneLineParser,
    is_out_of_memory,
    non_negative,
    non_negative_int,
    positive,
    positive_int,
    probability,
    seed,
    sigterm_like_ctrl_c,
)
from minivar.training.device import DTYPES, autocast, choose_dtype, pick_device
from minivar.training.plots import save_sample_grid
from minivar.training.workspace import generator_checkpoint

SAMPLING_DEFAULTS = {"cfg_scale": 1.5, "top_k": 0, "top_p": 1.0, "temperature": 1.0}  # for a checkpoint with none
MAX_PER_CLASS, MAX_REJECT = 100, 256  # a grid row of 100 pictures is already 110 inches wide
CANDIDATES_AT_ONCE = 512  # samples drawn in one batch: memory stays bounded whatever is asked


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


def as_rgb(opened, spec):
    """A Pillow image as 8-bit RGB. Pillow's own convert() clips 16-bit gray to 255 (a white
    picture), so it is scaled first; pixels whose white is not known (32-bit, float) are refused."""
    if opened.mode.startswith("I;16") or opened.mode == "I" and opened.format in ("PNG", "PPM"):  # 16-bit gray
        gray = np.asarray(opened, dtype=np.float64) / 257  # 65535 is white, as 255 is: 257 = 65535 / 255
        return Image.fromarray(gray.round().clip(0, 255).astype(np.uint8)).convert("RGB")
    if opened.mode in ("I", "F"):
        raise ValueError(f"--image {spec}: its pixels are {'32-bit integers' if opened.mode == 'I' else 'floats'} "
                         "(white is not known for them); save it as an 8- or 16-bit image")
    return opened.convert("RGB")  # 8 bits a channel (gray, palette, RGBA, CMYK, ...), and 16-bit RGB read as 8


def load_source_image(spec, data_dir):
    """--image: a CIFAR-10 test index (its label too) or an image file (resized to 32×32; label None)."""
    if spec.isdigit():
        images, labels = load_cifar10(data_dir, "test", download=False)
        if int(spec) >= len(images):
            raise ValueError(f"--image {spec}: the test split has images 0 to {len(images) - 1}")
        return to_float(images[int(spec)][None]), int(labels[int(spec)])
    try:
        with Image.open(spec) as opened:  # reads the header only: the size is known before any pixel is decoded
            if opened.width * opened.height > 4096 * 4096:
                raise ValueError(f"--image {spec}: {opened.width}×{opened.height} pixels is too large to read (at "
                                 "most 4096×4096; it is shrunk to 32×32 anyway)")
            picture = as_rgb(opened, spec).resize((32, 32), Image.BICUBIC)
    except Image.DecompressionBombError:  # Pillow's own guard, on sizes beyond its limit
        raise ValueError(f"--image {spec}: too large to read (at most 4096×4096 pixels)") from None
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
    with autocast(device, args.dtype):
        edited = edit(model, tokenizer, image.expand(len(labels), -1, -1, -1), labels, box, args.edit, **sampling).images
    shown = image[0].masked_fill(edited_region(box, args.edit).to(device)[None], 0.0)  # the region, grey
    rows = [torch.cat([image, shown[None], edited[i * args.n_per_class:(i + 1) * args.n_per_class].float()])
            for i in range(len(class_ids))]
    return torch.cat(rows), class_ids, args.n_per_class + 2


def parse_args(argv=None):
    p = OneLineParser(prog="python sample.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="a var (or ar) checkpoint written by train.py (default: out/var.pt if it exists, "
                                  "else checkpoints/var_cpu.pt, the model shipped with minivar)")
    p.add_argument("--classes", default="all", help="comma-separated names or ids, or 'all' (default: all)")
    p.add_argument("--n-per-class", type=positive_int, default=8, help=f"images per class, one row each, at most "
                   f"{MAX_PER_CLASS} (default: 8)")
    checkpoint_decides = "default: the checkpoint's recommended value if it has one, else {}"
    p.add_argument("--cfg-scale", type=non_negative,
                   help="classifier-free guidance weight at the last scale, 0 for none; negative weights would push "
                        "samples away from their class (" + checkpoint_decides.format(1.5) + ")")
    p.add_argument("--top-k", type=non_negative_int, help="keep the k most likely tokens, 0 for all ("
                                                          + checkpoint_decides.format(0) + ")")
    p.add_argument("--top-p", type=probability, help="nucleus sampling: keep the most likely tokens up to this "
                   "probability mass, 1 for all (" + checkpoint_decides.format(1) + ")")
    p.add_argument("--temperature", type=positive, help="divides the logits (" + checkpoint_decides.format(1) + ")")
    p.add_argument("--weights", choices=WEIGHTS, default="ema", help="ema: the moving average of the weights kept "
                   "during training, if the checkpoint has one; raw: the optimizer's last weights (default: ema)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random draws: the same seed gives the same "
                                                       "grid (default: 0)")
    p.add_argument("--reject", type=positive_int, default=1, help="draw N candidates per image, keep the one the "
                   f"model's implicit classifier rates best, N at most {MAX_REJECT} (default: 1, plain sampling)")
    p.add_argument("--edit", choices=MODES, help="zero-shot editing of --image (VAR only)")
    p.add_argument("--image", help="--edit: a CIFAR-10 test index or an image file")
    p.add_argument("--box", default="8,8,24,24", help="--edit: the region x0,y0,x1,y1 in pixels, x1 and y1 "
                                                       "exclusive (default: 8,8,24,24)")
    p.add_argument("--data-dir", default="./data", help="--edit with a test index: the folder holding "
                                                        "cifar-10-batches-py/ (default: ./data)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda or mps (default: auto)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="fp32, or bf16 autocast (logits and guidance stay "
                   "fp32); auto: bf16 on a CUDA GPU that has it, else fp32 (default: auto)")
    p.add_argument("--out", default="samples.png", help="the PNG to write (default: samples.png)")
    return p.parse_args(box_values_may_be_negative(sys.argv[1:] if argv is None else list(argv)))


def box_values_may_be_negative(argv):
    """`--box -1,0,5,5` as `--box=-1,0,5,5`: argparse would take -1,0,5,5 for a flag and say the value is
    missing; joined, it reaches the box check, which says what is wrong with it."""
    out = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] == "--box" and re.fullmatch(r"-[\d,.\-]+", arg):
            out[-1] = f"--box={arg}"
        else:
            out.append(arg)
    return out


def check_request(args):
    """What argparse cannot say alone: flags that need each other, and requests too large to draw."""
    if args.edit and args.image is None:
        raise ValueError(f"--edit {args.edit} needs --image: a CIFAR-10 test index or an image file")
    if args.image is not None and not args.edit:
        raise ValueError("--image is what --edit changes: add --edit inpaint, outpaint or classedit")
    if args.n_per_class > MAX_PER_CLASS:
        raise ValueError(f"--n-per-class {args.n_per_class}: a grid row holds at most {MAX_PER_CLASS} pictures; for "
                         "many samples (FID), use python -m minivar.studies.evaluate")
    if args.reject > MAX_REJECT:
        raise ValueError(f"--reject {args.reject}: at most {MAX_REJECT} candidates per picture (each one costs a "
                         "whole sample)")
    if args.edit and args.reject > 1:
        raise ValueError("--reject draws new samples; it does not apply to --edit")
    if args.edit:
        parse_box(args.box)  # a bad box is said before anything loads


def generate_in_batches(model, tokenizer, labels, reject, sampling):
    """Images for `labels`, drawn CANDIDATES_AT_ONCE candidates at a time (best of `reject` each)."""
    per_batch = max(1, CANDIDATES_AT_ONCE // reject)
    images = []
    for batch in labels.split(per_batch):
        if reject > 1:
            idx_list, _ = generate_best_of(model, tokenizer.quantizer, batch, reject, **sampling)
        else:
            idx_list = model.generate(tokenizer.quantizer, batch, **sampling)
        images.append(tokenizer.decode(idx_list).float())
    return torch.cat(images)


def main(argv=None):
    sigterm_like_ctrl_c()
    args = parse_args(argv)
    try:
        check_request(args)
        if Path(args.out).suffix.lower() != ".png":
            raise ValueError(f"--out {args.out}: the grid is written as PNG; give a .png path")
        device = pick_device(args.device)
        args.dtype = choose_dtype(args.dtype, device)[0]
        args.ckpt = args.ckpt or generator_checkpoint("out") or "out/var.pt"  # your run (./out), else the shipped one
        ckpt = load_checkpoint(args.ckpt)
        model, tokenizer = generator_from_checkpoint(ckpt, args.ckpt, device, args.weights)
        weights = weights_used(ckpt, args.weights)
        recommended = {**SAMPLING_DEFAULTS, **ckpt.get("sampling", {})}
        settings = {k: recommended[k] if getattr(args, k) is None else getattr(args, k) for k in SAMPLING_DEFAULTS}
        sampling = dict(settings, generator=torch.Generator(device).manual_seed(args.seed))
        columns = None
        if args.edit:
            images, class_ids, per_row = edit_grid(model, tokenizer, args, sampling, device)
            columns = ["source", f"{args.edit} region"] + [f"edit {i + 1}" for i in range(args.n_per_class)]
        else:
            class_ids, per_row = parse_classes(args.classes, model.cfg.num_classes), args.n_per_class
            labels = torch.tensor(class_ids, device=device).repeat_interleave(args.n_per_class)
            with autocast(device, args.dtype):
                images = generate_in_batches(model, tokenizer, labels, args.reject, sampling)
        save_sample_grid(images, [CLASSES[c] for c in class_ids], per_row, args.out, columns)
    except (CheckpointError, DataError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        sys.exit(f"error: out of memory while sampling ({str(e).splitlines()[0][:100]}); ask for fewer pictures")
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    what = f"{args.edit} edits of image {args.image}" if args.edit else "samples" if args.reject == 1 else \
        f"samples, each the best of {args.reject} by the model's implicit classifier"
    shown = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in settings.items())
    print(f"wrote {args.out}: {len(class_ids)} classes × {args.n_per_class} {what} from {args.ckpt}, {weights} "
          f"weights ({shown}, seed {args.seed})")


if __name__ == "__main__":
    try:
        main()
    finally:  # exiting: a further Ctrl-C has nothing left to stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

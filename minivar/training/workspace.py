"""Where a run's files are, for the scripts and the notebooks alike.

train.py reads CIFAR-10 from ./data and writes into ./out by default; sample.py, the
studies and the notebooks look in the same places, so that after `python train.py` every
later command and notebook finds that run with no flags. When there is no run of your
own, they use the model shipped in checkpoints/ (trained on CIFAR-10 with the cpu preset).

Notebooks run inside notebooks/, so their paths start at the project's root;
MINIVAR_DATA_DIR and MINIVAR_OUT_DIR point them elsewhere (the scripts take --data-dir
and --out-dir). A relative folder in those variables is read from the project's root too,
whatever folder the notebook runs in, and a MINIVAR_OUT_DIR that holds no run is an error,
never a silent fall-back to the shipped model.
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project's folder: minivar/training/workspace.py
SHIPPED = ROOT / "checkpoints" / "var_cpu.pt"  # VAR and its tokenizer, half-precision weights
SHIPPED_CLASSIFIER = ROOT / "checkpoints" / "perceptual_cpu.pt"  # the perceptual loss's CIFAR-10 classifier
DEFAULT_DATA, DEFAULT_OUT = ROOT / "data", ROOT / "out"  # train.py's --data-dir and --out-dir, from the root


def _from_env(name, default) -> Path:
    """$name if set (a relative folder read from the project's root), else default."""
    value = os.environ.get(name)
    return default if not value else ROOT / Path(value).expanduser()  # (an absolute value stays as it is)


def data_dir() -> Path:
    """Where the notebooks find CIFAR-10: $MINIVAR_DATA_DIR, else the project's data/ (train.py's default)."""
    return _from_env("MINIVAR_DATA_DIR", DEFAULT_DATA)


def out_dir() -> Path:
    """Where the notebooks find your run: $MINIVAR_OUT_DIR, else the project's out/ (train.py's default)."""
    return _from_env("MINIVAR_OUT_DIR", DEFAULT_OUT)


def generator_checkpoint(out=None):
    """Your run's var.pt if there is one, else the shipped model, else None."""
    own = Path(out if out is not None else out_dir()) / "var.pt"
    if own.is_file():
        return own
    return SHIPPED if SHIPPED.is_file() else None


# --- the lesson notebooks' setup ---

def lesson_setup(need="var"):
    """What a lesson notebook runs on, found in the order sample.py uses: your run (out_dir()),
    else the shipped model (SHIPPED), else a tiny model trained now on 1,000 CIFAR-10 images in
    a temporary folder, announced by a banner (its samples are noise: only the mechanics show).

    need="tokenizer": the tokenizer alone (your tokenizer.pt counts too; model is None).
    Returns a namespace: model (VAR, eval mode, CPU), tokenizer, source (which of the three),
    sampling (the sampling settings the checkpoint recommends, {} if none: the shipped one has them),
    test_images (uint8 N×3×32×32), test_labels, train_images, train_labels, fast (MINIVAR_FAST=1: skip
    slow parts), data_differs (the CIFAR-10 files are not the official release's, byte for byte).
    A MINIVAR_OUT_DIR that holds no run of the kind needed is a FileNotFoundError that names it."""
    import contextlib
    import io
    import shutil
    import tempfile
    from types import SimpleNamespace

    from minivar.data import cifar_folder, load_cifar10
    from minivar.training.checkpoint import frozen_tokenizer, load_checkpoint, load_generator

    if not cifar_folder(data_dir()).is_dir():  # said here: the download's progress bar is not shown below
        print(f"CIFAR-10 is not in {_shown(data_dir())}: downloading it there (170 MB)")
    path, own_tokenizer, tiny = generator_checkpoint(), out_dir() / "tokenizer.pt", None
    if need == "tokenizer" and own_tokenizer.is_file() and path in (None, SHIPPED):
        path = own_tokenizer  # your tokenizer before the shipped one
    named = os.environ.get("MINIVAR_OUT_DIR")
    if named and path in (None, SHIPPED):  # you named a folder: its run, or an error, never the shipped model
        wanted = "var.pt" if need == "var" else "tokenizer.pt or var.pt"
        raise FileNotFoundError(f"MINIVAR_OUT_DIR={named} names {_shown(out_dir())}, which holds no {wanted}: train "
                                f"into it first (python train.py --out-dir {named}; a relative folder is read from "
                                "the project's root), or unset MINIVAR_OUT_DIR to use the shipped model")
    if path is None:
        print("#" * 88 + f"\nNOTE: no trained model found (no {_shown(out_dir() / 'var.pt')}, no {_shown(SHIPPED)}):"
              "\ntraining a tiny model for this demo (about a minute); its samples are noise.\n"
              "For real pictures: `python train.py --preset cpu`, then run this notebook again.\n" + "#" * 88)
    notes = io.StringIO()  # data.py's notices name the data folder: printed below with the path shown relatively
    with contextlib.redirect_stdout(notes), contextlib.redirect_stderr(notes):
        try:
            if path is None:
                tiny = Path(tempfile.mkdtemp(prefix="minivar-tiny-"))
                path = _train_tiny(tiny, need)
            ckpt = load_checkpoint(path)
            if ckpt["kind"] == "tokenizer":
                model, tokenizer = None, frozen_tokenizer(ckpt["model_config"], ckpt["model"])
            else:
                model, tokenizer = load_generator(path, "cpu")
        finally:
            if tiny is not None:
                shutil.rmtree(tiny, ignore_errors=True)
        images, labels = load_cifar10(data_dir(), "test")
        train_images, train_labels = load_cifar10(data_dir(), "train")
    notes = notes.getvalue().replace(str(data_dir()), _shown(data_dir())).splitlines()
    differs = [line for line in notes if "from the official release" in line]  # data.py's md5 notice, per split
    for line in notes:
        if line not in differs:
            print(line)
    if differs:  # said once, in one line; notebook 01 explains it
        print(f"data: CIFAR-10 read from {_shown(data_dir())}/; its files are not byte for byte the official release's "
              "(notebook 01, section 'The data', says what differs and why it does not matter here)")
    model = model if need == "var" else None
    source = ("a tiny model trained just now" if tiny else "the shipped model" if path == SHIPPED else "your run") + \
        ("" if tiny else f" ({_shown(path)})")
    print(f"model: {source}: " + (f"VAR {model.num_params() / 1e6:.2f} M parameters, " if model else "") +
          f"tokenizer {tokenizer.num_params() / 1e6:.2f} M, scales {tokenizer.cfg.scales}, "
          f"codebook of {tokenizer.cfg.vocab_size}")
    return SimpleNamespace(model=model, tokenizer=tokenizer, source=source, sampling=ckpt.get("sampling", {}),
                           test_images=images, test_labels=labels, train_images=train_images,
                           train_labels=train_labels, fast=os.environ.get("MINIVAR_FAST") == "1",
                           data_differs=bool(differs))


def shipped_classifier(path=None):
    """The small CIFAR-10 classifier shipped in checkpoints/ (the one `python train.py --stage
    perceptual --preset cpu` trains for the perceptual loss; not the Inception network FID uses),
    loaded with weights_only=True and frozen, on the CPU. It judges samples with a network other
    than the model that drew them."""
    import torch

    from minivar.training.checkpoint import load_checkpoint
    from minivar.training.sharpness import frozen_classifier

    ckpt = load_checkpoint(path or SHIPPED_CLASSIFIER, "perceptual")
    return frozen_classifier(ckpt["model_config"], ckpt["model"], torch.device("cpu"))


def _shown(path) -> str:
    """A path as notebooks print it, never this machine's absolute path: relative to the project
    (./data even where it is a link to a folder elsewhere), else to the folder $MINIVAR_OUT_DIR or
    $MINIVAR_DATA_DIR names."""
    named = [(ROOT, ".")] + [(folder(), f"${name}") for name, folder in
                             (("MINIVAR_OUT_DIR", out_dir), ("MINIVAR_DATA_DIR", data_dir)) if os.environ.get(name)]
    path = Path(path).absolute()
    for candidate in (path, path.resolve()):  # as named first, then with its links followed
        for folder, name in named:
            for base in (folder.absolute(), folder.resolve()):
                if candidate.is_relative_to(base):
                    return str(Path(name) / candidate.relative_to(base)) if candidate != base else name
    return f"<{path.name}>"


def _train_tiny(folder: Path, need: str, n_train=1000) -> Path:
    """train.py's tiny preset on the first n_train training images (copied into `folder` in the
    official layout) with the plain L2 tokenizer: a minute, not the many of the full set."""
    import pickle
    import subprocess
    import sys

    import torch

    from minivar.data import CIFAR_FOLDER, load_cifar10

    subset = folder / "data" / CIFAR_FOLDER
    subset.mkdir(parents=True)
    splits = (("train", [f"data_batch_{i}" for i in range(1, 6)], n_train), ("test", ["test_batch"], 500))
    for split, names, n in splits:
        images, labels = load_cifar10(data_dir(), split)
        for name, rows in zip(names, torch.arange(min(n, len(images))).chunk(len(names))):
            batch = {b"data": images[rows].reshape(len(rows), -1).numpy(), b"labels": labels[rows].tolist()}
            (subset / name).write_bytes(pickle.dumps(batch))
    stages = [["--stage", "tokenizer", "--max-steps", "60", "--perceptual-weight", "0", "--adversarial-weight", "0"]]
    if need == "var":
        stages.append(["--stage", "var", "--max-steps", "40"])
    for args in stages:
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--device", "cpu",
                               "--data-dir", str(folder / "data"), "--out-dir", str(folder), *args],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"training the tiny model failed:\n{done.stderr[-3000:]}")
    return folder / ("var.pt" if need == "var" else "tokenizer.pt")

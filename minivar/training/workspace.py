"""Where a run's files are, for the scripts and the notebooks alike.

train.py reads CIFAR-10 from ./data and writes into ./out by default; sample.py, the
studies and the notebooks look in the same places, so that after `python train.py` every
later command and notebook finds that run with no flags. When there is no run of your
own, they use the model shipped in checkpoints/ (trained on CIFAR-10 with the cpu preset).

Notebooks run inside notebooks/, so their paths start at the project's root;
MINIVAR_DATA_DIR and MINIVAR_OUT_DIR point them elsewhere (the scripts take --data-dir
and --out-dir).
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project's folder: minivar/training/workspace.py
SHIPPED = ROOT / "checkpoints" / "var_cpu.pt"  # VAR and its tokenizer, half-precision weights


def data_dir() -> Path:
    """Where the notebooks find CIFAR-10: $MINIVAR_DATA_DIR, else the project's data/ (train.py's default)."""
    return Path(os.environ.get("MINIVAR_DATA_DIR", ROOT / "data"))


def out_dir() -> Path:
    """Where the notebooks find your run: $MINIVAR_OUT_DIR, else the project's out/ (train.py's default)."""
    return Path(os.environ.get("MINIVAR_OUT_DIR", ROOT / "out"))


def generator_checkpoint(out=None):
    """Your run's var.pt if there is one, else the shipped model, else None."""
    own = Path(out if out is not None else out_dir()) / "var.pt"
    if own.is_file():
        return own
    return SHIPPED if SHIPPED.is_file() else None

"""Checkpoints: written atomically, read as data.

A checkpoint is a plain dict of tensors, numbers, strings and dicts (the model's
config travels inside as a dict, so a checkpoint alone rebuilds its model).
- Saving writes to a temporary file in the same folder, then renames it over the
  target: an interrupted save never leaves a half-written checkpoint behind.
- Loading uses weights_only=True: a checkpoint is data, never code to execute.
"""
import json
import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or of the wrong kind (one clear line)."""


def save_checkpoint(obj: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)  # atomic on POSIX and Windows
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(obj, path) -> None:
    """Results files get the same care as checkpoints: temporary file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def load_checkpoint(path, kind: str | None = None) -> dict:
    """Load a checkpoint onto the CPU. `kind` ('tokenizer', 'var', 'ar') is checked if given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with train.py or pass the right path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or unsafe content
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} could not be read ({reason[:120]}); "
                              f"it may be corrupt or not a minivar checkpoint: retrain or pass another file") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"{path} is not a minivar checkpoint (no 'kind' entry)")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} is a {ckpt['kind']} checkpoint, but a {kind} checkpoint is needed here")
    return ckpt

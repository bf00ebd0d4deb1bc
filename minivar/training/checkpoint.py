"""Checkpoints and result files: written atomically, read as data.

- Writing: a temporary file in the same folder, flushed to the disk (fsync), then renamed
  over the target. An interrupted write (Ctrl-C, SIGKILL, a power cut) never leaves a
  half-written file, and the temporaries a killed write left behind are removed by the
  next write of the same file. A full disk is said in one line; the previous file stays.
- Reading: torch.load(weights_only=True). A checkpoint is a plain dict of tensors, numbers,
  strings and dicts, never code to execute; the model's config travels inside it, so the
  file alone rebuilds the model. A var or ar checkpoint also carries its tokenizer.
"""
import errno
import json
import os
import tempfile
from pathlib import Path

import torch

from minivar.ar import AR
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.var import VAR, VARConfig


class CheckpointError(Exception):
    """A checkpoint or output file that is missing, unreadable, of the wrong kind, or could
    not be written: said in one line, with what to do about it."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(f"cannot write {path}: {path.parent} is a file, not a folder") from None
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by a write that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename makes it the real file
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs the usual permissions
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except OSError as e:
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise CheckpointError(f"no space left on the disk of {path.parent} while writing {path.name}; "
                                  f"nothing was replaced: free some space and run again") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(obj, path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def save_json(obj, path) -> None:
    """Result files get the same care as checkpoints."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def load_checkpoint(path, kind: str | None = None) -> dict:
    """Load a checkpoint onto the CPU. `kind` ('tokenizer', 'var', ...) is checked if given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with train.py or pass the right path")
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    if not is_zip:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a zip archive); pass a file written by "
                              "train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals are UnpicklingErrors; damaged archives RuntimeErrors
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(f"{path} holds objects other than tensors and plain data; refused, since loading "
                                  "them could run code (weights_only=True)") from None
        raise CheckpointError(f"{path} is truncated or damaged ({type(e).__name__}); retrain, or pass another "
                              "file") from None
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"{path} is not a minivar checkpoint (no 'kind' entry)")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} is a {ckpt['kind']} checkpoint, but a {kind} checkpoint is needed here")
    return ckpt


def as_float32(state: dict) -> dict:
    """Weights as float32 (the checkpoint shipped in checkpoints/ stores them as float16)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def frozen_tokenizer(config: dict, state: dict):
    """Rebuild a tokenizer from a checkpoint's config and weights, for inference only."""
    tokenizer = Tokenizer(TokenizerConfig(**config))
    tokenizer.load_state_dict(as_float32(state))
    return tokenizer.eval().requires_grad_(False)


def load_generator(ckpt_path, device):
    """(model, tokenizer) rebuilt from a var or ar checkpoint alone (it carries its tokenizer)."""
    return generator_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path, device)


def generator_from_checkpoint(ckpt, ckpt_path, device):
    """load_generator for a checkpoint already read (ckpt_path only names it in errors)."""
    models = {"var": VAR, "ar": AR}
    if ckpt["kind"] not in models:
        raise CheckpointError(f"{ckpt_path} is a {ckpt['kind']} checkpoint; a var or ar checkpoint is needed "
                              f"(train one with: python train.py --stage var)")
    model = models[ckpt["kind"]](VARConfig(**ckpt["model_config"]))
    try:
        model.load_state_dict(as_float32(ckpt["model"]))
    except RuntimeError:
        raise CheckpointError(f"{ckpt_path}: its weights do not match the model config stored with them") from None
    tokenizer = frozen_tokenizer(ckpt["tokenizer_config"], ckpt["tokenizer"])
    return model.to(device).eval(), tokenizer.to(device)


SAMPLING_SETTINGS = ("cfg_scale", "top_k", "top_p", "temperature")  # what a checkpoint's "sampling" may hold
LOCAL_FOLDERS = ("data_dir", "out_dir", "tokenizer", "perceptual")  # train_config's paths on the training machine


def export_for_sampling(ckpt_path, out_path, sampling=None):
    """A var (or ar) checkpoint made small for sampling: model and tokenizer weights in half
    precision, no optimizer state, plus the sampling settings to use by default (sample.py
    reads them). Loads like any checkpoint (as_float32 restores float32 weights). The training
    settings travel with it, less the folders of the machine that trained it: a shared file
    should not carry them, and nothing that samples needs them."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["kind"] not in ("var", "ar"):
        raise CheckpointError(f"{ckpt_path} is a {ckpt['kind']} checkpoint; a var or ar checkpoint is needed")
    half = {k: {name: v.half() if v.is_floating_point() else v for name, v in ckpt[k].items()}
            for k in ("model", "tokenizer")}
    keep = ("kind", "model_config", "tokenizer_config", "train_config", "step", "train_seconds", "finished")
    kept = {k: ckpt[k] for k in keep if k in ckpt}
    if "train_config" in kept:
        kept["train_config"] = {k: v for k, v in kept["train_config"].items() if k not in LOCAL_FOLDERS}
    save_checkpoint({**kept, **half, "sampling": dict(sampling or {})}, out_path)


def main(argv=None):
    """python -m minivar.training.checkpoint out/var.pt checkpoints/var_cpu.pt --cfg-scale 2"""
    import sys

    from minivar.training.cli import OneLineParser, non_negative, non_negative_int, positive, probability
    p = OneLineParser(prog="python -m minivar.training.checkpoint", description="Export a var or ar checkpoint for "
                      "sampling: half-precision weights, no optimizer state, default sampling settings")
    p.add_argument("ckpt", help="a var or ar checkpoint written by train.py")
    p.add_argument("out", help="the file to write")
    for flag, kind in (("--cfg-scale", non_negative), ("--top-k", non_negative_int), ("--top-p", probability),
                       ("--temperature", positive)):
        p.add_argument(flag, type=kind, help="the default sample.py will use (default: none stored)")
    args = p.parse_args(argv)
    sampling = {k: v for k in SAMPLING_SETTINGS if (v := getattr(args, k)) is not None}
    try:
        export_for_sampling(args.ckpt, args.out, sampling)
    except (CheckpointError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}: {Path(args.out).stat().st_size / 2**20:.1f} MiB, sampling defaults {sampling}")


if __name__ == "__main__":
    main()

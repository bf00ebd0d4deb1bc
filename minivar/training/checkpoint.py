"""Checkpoints and result files: written atomically, read as data.

- Writing: atomic (files.py): an interrupted write never leaves a half-written file, and a
  full disk is said in one line; the previous file stays.
- Reading: torch.load(weights_only=True). A checkpoint is a plain dict of tensors, numbers,
  strings and dicts, never code to execute; the model's config travels inside it, so the
  file alone rebuilds the model. A var or ar checkpoint also carries its tokenizer. Before it
  is used, a file is checked whole (the zip's checksums) and for what its kind must hold.
"""
import io
import json
import zipfile
from dataclasses import fields
from pathlib import Path

import torch

from minivar.ar import AR
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training.files import atomic_write, not_a_file
from minivar.training.presets import MODEL_CONFIGS, TrainConfig
from minivar.var import VAR, VARConfig


class CheckpointError(Exception):
    """A checkpoint or output file that is missing, unreadable, of the wrong kind, or could
    not be written: said in one line, with what to do about it."""


def save_checkpoint(obj, path) -> None:
    """torch.save into memory first, then one atomic write: a full disk then fails in the
    write, said in one line (files.py), never inside torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def save_json(obj, path) -> None:
    """Result files get the same care as checkpoints."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def read_verified(path):
    """torch.load(weights_only=True) of a file written by save_checkpoint, after checking that it
    is a whole, undamaged zip archive: every entry's CRC-32 is compared with its bytes (torch.load
    does not look, so one flipped byte would load silently as a changed weight)."""
    path = Path(path)
    problem = not_a_file(path)  # missing, a folder, a broken symlink: each said as it is
    if problem:
        raise CheckpointError(f"checkpoint {problem}; " + ("pass a checkpoint file in it (a .pt file written by "
                              "train.py)" if path.is_dir() else "train one with train.py or pass the right path"))
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {path}: {e.strerror or e}") from None
    if not is_zip:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a zip archive); pass a file written by "
                              "train.py")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # the first entry whose bytes fail their CRC-32, or None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path} is truncated or damaged ({type(e).__name__}); retrain, or pass another "
                              "file") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is damaged: its part {damaged} fails its checksum (CRC-32); retrain, or pass "
                              "another file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refusals are UnpicklingErrors; damaged archives RuntimeErrors
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(f"{path} holds objects other than tensors and plain data; refused, since loading "
                                  "them could run code (weights_only=True)") from None
        raise CheckpointError(f"{path} is truncated or damaged ({type(e).__name__}); retrain, or pass another "
                              "file") from None


# What a checkpoint of each kind holds (beyond "kind"), and the settings classes its configs must fit.
HOLDS = {"perceptual": ("model_config", "model"), "tokenizer": ("model_config", "model"),
         "var": ("model_config", "model", "tokenizer_config", "tokenizer"),
         "ar": ("model_config", "model", "tokenizer_config", "tokenizer"), "fid-reference": ("mu", "sigma")}
RESUMABLE = ("train_config", "optimizer", "step", "train_seconds", "rng")  # what --resume needs besides


def config_classes(kind):
    """The settings class of each config a checkpoint of `kind` carries."""
    classes = {"train_config": TrainConfig}
    if kind in MODEL_CONFIGS:
        classes["model_config"] = MODEL_CONFIGS[kind]
    if kind in ("var", "ar"):
        classes["tokenizer_config"] = TokenizerConfig
    return classes


def load_checkpoint(path, kind: str | None = None, resumable=False) -> dict:
    """Load a checkpoint onto the CPU, checked whole (read_verified) and checked for what its kind
    must hold, configs whose settings this version of minivar knows: a malformed file is one line
    naming it, never a KeyError later. `kind` ('tokenizer', 'var', ...) is checked if given;
    `resumable`: it must also hold what --resume needs (optimizer, step, RNG state, settings)."""
    path = Path(path)
    ckpt = read_verified(path)
    if not isinstance(ckpt, dict) or "kind" not in ckpt:
        raise CheckpointError(f"{path} is not a minivar checkpoint (no 'kind' entry)")
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} is a {ckpt['kind']} checkpoint, but a {kind} checkpoint is needed here")
    missing = [k for k in HOLDS.get(ckpt["kind"], ()) + (RESUMABLE if resumable else ()) if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is a {ckpt['kind']} checkpoint without {', '.join(missing)}" +
                              ("; it cannot be resumed (--force starts over)" if resumable else
                               "; pass a file written by train.py"))
    for key, cls in config_classes(ckpt["kind"]).items():
        if key not in ckpt:
            continue
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(ckpt[key]) - known) if isinstance(ckpt[key], dict) else ["(not a dict)"]
        if unknown:
            raise CheckpointError(f"{path}: its {key} has settings this version of minivar does not know "
                                  f"({', '.join(map(str, unknown))}); it was written by another version")
    for key in ("model", "tokenizer", "ema"):
        if key in ckpt and not (isinstance(ckpt[key], dict) and all(isinstance(v, torch.Tensor)
                                                                    for v in ckpt[key].values())):
            raise CheckpointError(f"{path}: its {key} entry is not a dict of tensors; pass a file written by train.py")
    return ckpt


def as_float32(state: dict) -> dict:
    """Weights as float32 (the checkpoint shipped in checkpoints/ stores them as float16)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def frozen_tokenizer(config: dict, state: dict):
    """Rebuild a tokenizer from a checkpoint's config and weights, for inference only."""
    tokenizer = Tokenizer(TokenizerConfig(**config))
    tokenizer.load_state_dict(as_float32(state))
    return tokenizer.eval().requires_grad_(False)


WEIGHTS = ("ema", "raw")  # which weights of a generator to sample from (training/ema.py)


def load_generator(ckpt_path, device, weights="ema"):
    """(model, tokenizer) rebuilt from a var or ar checkpoint alone (it carries its tokenizer)."""
    return generator_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path, device, weights)


def weights_used(ckpt, weights="ema"):
    """Which weights a generator checkpoint gives for a request: "ema" (the moving average of
    the weights, training/ema.py) where it has one, else "raw" (the optimizer's last weights).
    A training checkpoint holds both ("model" and "ema"); an exported one holds one set under
    "model" and says which in "weights"."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r}: choose one of {', '.join(WEIGHTS)}")
    has_ema = "ema" in ckpt or ckpt.get("weights") == "ema"
    return "ema" if weights == "ema" and has_ema else "raw"


def generator_weights(ckpt, ckpt_path, weights="ema"):
    """The state dict to sample from (see weights_used)."""
    if weights_used(ckpt, weights) == "ema":
        return ckpt.get("ema", ckpt["model"])
    if ckpt.get("weights", "raw") != "raw":
        raise CheckpointError(f"{ckpt_path} holds only its EMA weights (an exported file); the raw weights are in the "
                              "training checkpoint it was exported from")
    return ckpt["model"]


def generator_from_checkpoint(ckpt, ckpt_path, device, weights="ema"):
    """load_generator for a checkpoint already read (ckpt_path only names it in errors)."""
    models = {"var": VAR, "ar": AR}
    if ckpt["kind"] not in models:
        raise CheckpointError(f"{ckpt_path} is a {ckpt['kind']} checkpoint; a var or ar checkpoint is needed "
                              f"(train one with: python train.py --stage var)")
    model = models[ckpt["kind"]](VARConfig(**ckpt["model_config"]))
    try:
        model.load_state_dict(as_float32(generator_weights(ckpt, ckpt_path, weights)))
    except RuntimeError:
        raise CheckpointError(f"{ckpt_path}: its weights do not match the model config stored with them") from None
    tokenizer = frozen_tokenizer(ckpt["tokenizer_config"], ckpt["tokenizer"])
    return model.to(device).eval(), tokenizer.to(device)


SAMPLING_SETTINGS = ("cfg_scale", "top_k", "top_p", "temperature")  # what a checkpoint's "sampling" may hold
LOCAL_FOLDERS = ("data_dir", "out_dir", "tokenizer", "perceptual")  # train_config's paths on the training machine


def export_for_sampling(ckpt_path, out_path, sampling=None, weights="ema"):
    """A var (or ar) checkpoint made small for sampling: one set of model weights (the EMA's
    if it has one, unless weights="raw"; "weights" says which) and the tokenizer's, in half
    precision, no optimizer state, plus the sampling settings to use by default (sample.py
    reads them). Loads like any checkpoint (as_float32 restores float32 weights). The training
    settings travel with it, less the folders of the machine that trained it: a shared file
    should not carry them, and nothing that samples needs them. A perceptual checkpoint (the
    classifier) keeps its weights as trained and its settings, without the optimizer state."""
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["kind"] == "perceptual":  # the classifier: its weights as trained (float32, about 1 MiB), nothing else
        kept = {k: ckpt[k] for k in ("kind", "model_config", "model", "step", "train_seconds", "finished") if k in ckpt}
        kept["train_config"] = {k: v for k, v in ckpt.get("train_config", {}).items() if k not in LOCAL_FOLDERS}
        return save_checkpoint(kept, out_path)
    if ckpt["kind"] not in ("var", "ar"):
        raise CheckpointError(f"{ckpt_path} is a {ckpt['kind']} checkpoint; a var, ar or perceptual checkpoint is needed")
    chosen = {"model": generator_weights(ckpt, ckpt_path, weights), "tokenizer": ckpt["tokenizer"]}
    half = {k: {name: v.half() if v.is_floating_point() else v for name, v in state.items()}
            for k, state in chosen.items()}
    keep = ("kind", "model_config", "tokenizer_config", "train_config", "step", "train_seconds", "finished")
    kept = {k: ckpt[k] for k in keep if k in ckpt}
    if "train_config" in kept:
        kept["train_config"] = {k: v for k, v in kept["train_config"].items() if k not in LOCAL_FOLDERS}
    exported = {**kept, **half, "weights": weights_used(ckpt, weights), "sampling": dict(sampling or {})}
    save_checkpoint(exported, out_path)


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
    p.add_argument("--weights", choices=WEIGHTS, default="ema", help="ema: the moving average of the weights, if the "
                   "checkpoint has one; raw: the optimizer's last weights (default: ema)")
    args = p.parse_args(argv)
    sampling = {k: v for k in SAMPLING_SETTINGS if (v := getattr(args, k)) is not None}
    try:
        export_for_sampling(args.ckpt, args.out, sampling, args.weights)
    except (CheckpointError, OSError) as e:
        sys.exit(f"error: {e}")
    exported, size = load_checkpoint(args.out), Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out}: {size:.1f} MiB, " + ("the classifier's weights" if exported["kind"] == "perceptual" else
                                                  f"{exported['weights']} weights, sampling defaults {sampling}"))


if __name__ == "__main__":
    main()

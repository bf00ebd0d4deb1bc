"""What a training run starts from: the network a stage trains on, and, on --resume, what the
checkpoint allows to change.

- A new run of var or ar trains on a frozen tokenizer (--tokenizer, else <out-dir>/tokenizer.pt);
  a new tokenizer with a perceptual loss on the perceptual network (--perceptual, else
  <out-dir>/perceptual.pt). The checkpoint then carries a copy, so resuming needs no other file.
- On --resume, the checkpoint's own copy is used; naming another network is refused (weights
  trained on one cannot silently continue on another), and so is a --max-steps or --stop-at
  behind the checkpoint's step. The settings themselves are resolved in presets.run_settings.
"""
from dataclasses import replace
from pathlib import Path

import torch

from minivar.training.checkpoint import CheckpointError, load_checkpoint


def initial_weights(kind, cfg, model_cfg, cli):
    """--init-from: a new var or ar run that starts from the weights of another checkpoint of its
    kind (the shipped model, say), with that checkpoint's model settings. Returns (model config,
    weights, the checkpoint) or (model_cfg, None, None) without the flag. The run then trains on
    the tokenizer that checkpoint carries (dependency, below)."""
    if not cfg.init_from:
        return model_cfg, None, None
    if cli.get("resume"):
        raise ValueError("--init-from starts a new run from a checkpoint's weights; --resume continues a run: use one")
    if cli.get("tokenizer"):
        raise ValueError(f"--init-from {cfg.init_from} trains on the tokenizer that checkpoint carries: drop "
                         "--tokenizer")
    init = load_checkpoint(cfg.init_from, kind)
    held = init["model_config"]
    differ = [f"{k} {held.get(k)}" for k in ("dim", "depth", "heads") if k in cli and cli[k] != held.get(k)]
    if differ:
        raise ValueError(f"--init-from {cfg.init_from}: its model has {', '.join(differ)}; drop those flags")
    config = replace(type(model_cfg)(**init["model_config"]), attention=model_cfg.attention)
    return config, init["model"], init


def dependency(kind, cfg, model_cfg, out_dir, init=None):
    """What a stage trains on: VAR/AR a frozen tokenizer (--tokenizer, else the one an --init-from
    checkpoint carries, else <out-dir>/tokenizer.pt); the tokenizer the perceptual network (when its
    loss is on). Returned as the entries a checkpoint of `kind` carries."""
    if kind in ("var", "ar") and init is not None:
        return {"tokenizer": {"tokenizer_config": init["tokenizer_config"], "tokenizer": init["tokenizer"]}}
    if kind in ("var", "ar"):
        path = cfg.tokenizer or out_dir / "tokenizer.pt"
        tok = carried_tokenizer(load_checkpoint(path), path)
        if kind == "var" and len(tok["model_config"]["scales"]) == 1:
            raise ValueError(f"--stage var needs a multi-scale tokenizer, but {path} has scales "
                             f"{tuple(tok['model_config']['scales'])}: train one with python train.py --stage "
                             "tokenizer --out-dir DIR, then pass --out-dir DIR (or --tokenizer DIR/tokenizer.pt)")
        if not tok.get("finished", True):
            print(f"note: {path} is an unfinished run (step {tok['step']}); training on it as it is")
        return {"tokenizer": {"tokenizer_config": tok["model_config"], "tokenizer": tok["model"]}}
    if kind == "tokenizer" and model_cfg.perceptual_weight > 0:
        path = Path(cfg.perceptual or out_dir / "perceptual.pt")
        if not path.is_file():
            raise CheckpointError(f"the tokenizer's perceptual loss needs {path}: train it first with python train.py "
                                  "--stage perceptual (minutes), or pass --perceptual-weight 0")
        net = load_checkpoint(path, "perceptual")
        return {"perceptual": {"model_config": net["model_config"], "model": net["model"]}}
    return {}


def carried_tokenizer(ckpt, path):
    """A tokenizer checkpoint as it is; a var or ar checkpoint (checkpoints/var_cpu.pt, say) as the
    tokenizer it carries, in fp32 (an exported file holds it in half precision)."""
    if ckpt["kind"] in ("var", "ar"):
        return {"kind": "tokenizer", "model_config": ckpt["tokenizer_config"],
                "model": {k: v.float() if v.is_floating_point() else v for k, v in ckpt["tokenizer"].items()}}
    if ckpt["kind"] != "tokenizer":
        raise CheckpointError(f"--tokenizer {path} is a {ckpt['kind']} checkpoint: pass a tokenizer checkpoint, or a "
                              "var or ar checkpoint (its tokenizer is used)")
    return ckpt


def ckpt_dependency(ckpt, kind, cli, ckpt_path):
    """On --resume, what the stage trained on comes from its own checkpoint. --tokenizer or
    --perceptual naming a network other than the one it carries is refused: it cannot change
    under weights trained on the first."""
    if kind in ("var", "ar"):
        held = {"tokenizer_config": ckpt["tokenizer_config"], "tokenizer": ckpt["tokenizer"]}
        refuse_another(cli, "tokenizer", held["tokenizer"], ckpt_path)
        return {"tokenizer": held}
    if kind == "tokenizer" and ckpt["model_config"].get("perceptual_weight", 0) > 0:
        if "perceptual" not in ckpt:
            raise CheckpointError(f"{ckpt_path} was trained with a perceptual loss but does not carry its perceptual "
                                  "network; --force starts over")
        refuse_another(cli, "perceptual", ckpt["perceptual"]["model"], ckpt_path)
        return {"perceptual": ckpt["perceptual"]}
    return {}


def refuse_another(cli, name, held_state, ckpt_path):
    if not cli.get(name):
        return
    given = (carried_tokenizer(load_checkpoint(cli[name]), cli[name]) if name == "tokenizer" else
             load_checkpoint(cli[name], name))["model"]
    if given.keys() != held_state.keys() or not all(torch.equal(given[k].float(), held_state[k].float())
                                                    for k in given):
        raise ValueError(f"--{name} {cli[name]}: {ckpt_path} trained on the {name} it carries, not this one; it "
                         f"cannot change on --resume (--force starts over with it, or pass another --out-dir)")


def steps_left(ckpt, cfg, ckpt_path, main):
    """On --resume: whether there is anything to train. --max-steps or --stop-at behind the
    checkpoint's step is refused; a run already at --max-steps has nothing left to do."""
    done = ckpt["step"]
    if cfg.max_steps < done:
        raise ValueError(f"--max-steps {cfg.max_steps}: {ckpt_path} is already at step {done}; a larger --max-steps "
                         "extends it")
    if 0 < cfg.stop_at <= done:
        raise ValueError(f"--stop-at {cfg.stop_at}: {ckpt_path} is already at step {done}")
    if cfg.max_steps == done:
        if main:
            print(f"{ckpt_path} is already at step {done} = --max-steps: nothing to do (a larger --max-steps extends "
                  "it)")
        return False
    return True

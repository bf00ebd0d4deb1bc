"""Every setting of a training run: TrainConfig (the flags of train.py), the presets that
size each stage for a GPU, a laptop CPU or a test, and the model settings a flag can change.

Settings come from three places, later ones winning: the preset, the checkpoint being
resumed, and the flags typed (train.py).
"""
import argparse
from dataclasses import dataclass, field, fields, replace

from minivar.tokenizer import TokenizerConfig
from minivar.training.cli import OneLineParser, below_one, non_negative, non_negative_int, positive, positive_int, seed
from minivar.training.sharpness import PerceptualConfig
from minivar.var import VARConfig

STAGES = ("perceptual", "tokenizer", "var")  # what `python train.py --stage all` runs, in order
BASELINES = ("ar",)  # run on its own: --stage ar


def flag(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    stage: str = flag("all", "what to train", choices=STAGES + BASELINES + ("all",))
    preset: str = flag("auto", "model sizes and budgets; auto: gpu where a CUDA GPU is, else cpu (the gpu preset "
                               "would take hours on a laptop)", choices=("auto", "gpu", "gpu-long", "cpu", "tiny"))
    data_dir: str = flag("./data", "folder holding cifar-10-batches-py/ (downloaded there if absent)")
    out_dir: str = flag("./out", "checkpoints, logs and pictures of this run")
    device: str = flag("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    dtype: str = flag("auto", "fp32, or bf16 autocast; auto: bf16 on a CUDA GPU that has it, elsewhere the faster of "
                              "the two for one training step, timed at start-up", choices=("auto", "fp32", "bf16"))
    seed: int = flag(0, "seed of the initial weights and of the data order")
    max_steps: int = flag(20_000, "optimizer steps; the learning-rate schedule ends here")
    batch_size: int = flag(128, "global batch: under torchrun each of N processes takes batch_size / N rows")
    lr: float = flag(1e-3, "peak learning rate, after warm-up, before the cosine decay")
    warmup_steps: int = flag(200, "steps of linear learning-rate warm-up")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    grad_clip: float = flag(1.0, "gradients are clipped to this norm")
    ema_decay: float = flag(0.0, "var, ar: keep an exponential moving average of the weights with this decay (warmed "
                                 "up as (1 + step)/(10 + step)); samples come from it. 0: none", stages=("var", "ar"))
    log_every: int = flag(25, "steps between lines of <stage>_log.jsonl (and progress-bar figures)")
    eval_every: int = flag(2000, "steps between test evaluations, each with a checkpoint and a picture")
    eval_images: int = flag(10_000, "test images an evaluation uses")
    train_images: int = flag(0, "train on the first N training images only (0: all 50,000)")
    reseed_every: int = flag(100, "tokenizer: steps between re-seeds of unused codes", stages=("tokenizer",))
    tokenizer: str = flag("", "var, ar: the tokenizer checkpoint, or a var/ar checkpoint whose tokenizer to use (default: "
                              "<out-dir>/tokenizer.pt)", stages=("var", "ar"))
    perceptual: str = flag("", "tokenizer: the perceptual network's checkpoint (default: <out-dir>/perceptual.pt)",
                           stages=("tokenizer",))
    init_from: str = flag("", "var, ar: start a new run from the weights of this var or ar checkpoint (e.g. "
                              "checkpoints/var_cpu.pt) and the tokenizer it carries; the optimizer starts afresh",
                          stages=("var", "ar"))
    compile: bool = flag(False, "torch.compile the model (pays on a GPU; the first steps are slower)")
    stop_at: int = flag(0, "if > 0, stop at this step with a checkpoint; the schedule still aims at --max-steps")
    resume: bool = flag(False, "continue the run whose checkpoint is in --out-dir")
    force: bool = flag(False, "start over, replacing the checkpoint in --out-dir")


# The model settings a flag can change (the rest come from the preset), with the stage they belong to.
MODEL_FLAGS = {
    "scales": ("tokenizer", "token-map sides, e.g. 1,2,3,4,5,6,8 (VAR) or 8 (the AR baseline's tokenizer)"),
    "adversarial_weight": ("tokenizer", "weight of the discriminator's loss (0: off)"),
    "perceptual_weight": ("tokenizer", "weight of the perceptual loss (0: off; both 0: the plain L2 tokenizer)"),
    "disc_start": ("tokenizer", "the step the discriminator starts learning"),
    "disc_warmup": ("tokenizer", "steps it learns alone before its loss reaches the decoder"),
    "dim": ("var", "transformer width"),
    "depth": ("var", "transformer blocks"),
    "heads": ("var", "attention heads (they split the width)"),
    "attention": ("var", "attention in full passes: sdpa (the dense mask), flex (FlexAttention: skips masked tiles) "
                         "or auto (time both on this device at start-up, keep the faster)"),
}

# Per preset and stage: training settings, and the model's config. The GPU presets are
# sized for one H100-class GPU (the README says what was measured).
PRESETS = {
    "gpu": {"perceptual": ({"max_steps": 1500, "batch_size": 256, "lr": 3e-3, "eval_every": 1500}, {}),
            "tokenizer": ({"max_steps": 3000, "batch_size": 128, "lr": 2e-3, "eval_every": 1500},
                          {"widths": (128, 256, 256), "res_blocks": 2, "disc_start": 1000, "disc_warmup": 500}),
            "var": ({"max_steps": 6000, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.05, "warmup_steps": 300,
                     "eval_every": 3000, "ema_decay": 0.999}, {"dim": 384, "depth": 8, "heads": 6})},
    "cpu": {"perceptual": ({"max_steps": 800, "batch_size": 128, "lr": 2e-3, "warmup_steps": 50, "eval_every": 800,
                            "eval_images": 2000}, {}),
            "tokenizer": ({"max_steps": 1400, "batch_size": 64, "lr": 2e-3, "eval_every": 500, "eval_images": 2000},
                          {"widths": (64, 128, 128), "res_blocks": 1, "disc_start": 500, "disc_warmup": 300}),
            "var": ({"max_steps": 1700, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "warmup_steps": 100,
                     "eval_every": 400, "eval_images": 2000, "ema_decay": 0.999},
                    {"dim": 192, "depth": 6, "heads": 4})},
    # tiny (tests): fp32 always, not auto, so that two runs compared by a test never differ by a timing
    "tiny": {"perceptual": ({"max_steps": 10, "batch_size": 16, "lr": 2e-3, "warmup_steps": 2, "log_every": 5,
                             "eval_every": 10, "eval_images": 64, "dtype": "fp32"}, {"widths": (8, 16, 16)}),
             "tokenizer": ({"max_steps": 30, "batch_size": 16, "lr": 2e-3, "warmup_steps": 5, "log_every": 5,
                            "eval_every": 15, "eval_images": 64, "reseed_every": 10, "dtype": "fp32"},
                           {"widths": (16, 32, 32), "res_blocks": 1, "vocab_size": 64, "latent_dim": 8,
                            "disc_start": 8, "disc_warmup": 2}),
             "var": ({"max_steps": 20, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "log_every": 5,
                      "eval_every": 10, "eval_images": 64, "ema_decay": 0.999, "train_images": 2000, "dtype": "fp32"},
                     {"dim": 32, "depth": 2, "heads": 2})},
}
PRESETS["gpu-long"] = {  # the gpu preset scaled up for about an hour
    "perceptual": PRESETS["gpu"]["perceptual"],
    "tokenizer": ({**PRESETS["gpu"]["tokenizer"][0], "max_steps": 15_000, "eval_every": 5000},
                  {**PRESETS["gpu"]["tokenizer"][1], "disc_start": 5000, "disc_warmup": 1000}),
    "var": ({**PRESETS["gpu"]["var"][0], "max_steps": 30_000, "warmup_steps": 1000, "eval_every": 10_000},
            {"dim": 512, "depth": 12, "heads": 8})}
for _preset in PRESETS.values():  # the AR baseline gets VAR's budget: same width, depth, steps, batch
    _preset["ar"] = _preset["var"]
MODEL_CONFIGS = {"perceptual": PerceptualConfig, "tokenizer": TokenizerConfig, "var": VARConfig, "ar": VARConfig}
CHANGEABLE_ON_RESUME = ("attention",)  # how attention is computed, not what the weights are
NOT_RESUMED = ("stop_at", "resume", "force")  # train_config entries that apply to one command only


def flag_stages(name):
    """The stages a flag applies to: train_config flags by their metadata, model flags by MODEL_FLAGS
    (var's model flags are ar's too); None for flags of every stage."""
    if name in MODEL_FLAGS:
        kind = MODEL_FLAGS[name][0]
        return ("var", "ar") if kind == "var" else (kind,)
    train_field = TrainConfig.__dataclass_fields__.get(name)
    return train_field.metadata.get("stages") if train_field else None


def preset_name(cli):
    """The preset a command uses: the one typed, or for auto (the default) gpu on a CUDA GPU, else cpu."""
    import torch
    preset = cli.get("preset", TrainConfig.preset)
    return ("gpu" if torch.cuda.is_available() else "cpu") if preset == "auto" else preset


def run_settings(kind, cli, ckpt=None, ckpt_path=None):
    """(TrainConfig, model config) of a run of stage `kind`: the preset's, then on --resume the
    checkpoint's, then the flags typed (cli). A flag that would change what a resumed
    checkpoint is (its preset or its model) is refused in one line (ValueError): it cannot
    apply to weights already trained, and ignoring it would be worse."""
    typed = cli.get("preset", "auto")
    preset = ckpt["train_config"].get("preset", "cpu") if ckpt is not None and typed == "auto" else preset_name(cli)
    preset_train, preset_model = PRESETS[preset][kind]
    cfg = replace(TrainConfig(), **preset_train, preset=preset)
    model_cfg = MODEL_CONFIGS[kind](**preset_model)
    if ckpt is not None:
        saved = ckpt["train_config"]
        if typed != "auto" and typed != saved.get("preset", typed):
            raise ValueError(f"--preset {cli['preset']}: {ckpt_path} was trained with --preset {saved['preset']}, "
                             "which sized its model; the preset cannot change on --resume (single flags such as --lr "
                             "or --max-steps can; --force starts over)")
        cfg = replace(cfg, **{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__
                              and k not in NOT_RESUMED})
        model_cfg = MODEL_CONFIGS[kind](**ckpt["model_config"])
    cfg = replace(cfg, **{k: v for k, v in cli.items() if k in TrainConfig.__dataclass_fields__ and k != "preset"})
    for name in MODEL_FLAGS:
        if name not in cli or kind not in flag_stages(name):
            continue
        if ckpt is not None and name not in CHANGEABLE_ON_RESUME and cli[name] != getattr(model_cfg, name):
            raise ValueError(f"--{name.replace('_', '-')} {shown(cli[name])}: {ckpt_path} was trained with "
                             f"{shown(getattr(model_cfg, name))}; a model setting cannot change on --resume (--force "
                             "starts over, or pass another --out-dir)")
        model_cfg = replace(model_cfg, **{name: cli[name]})
    return cfg, model_cfg


def shown(value):
    """A setting as it is typed: 1,2,3 for a tuple."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)



def preset_default(name):
    """--help text for a setting the preset decides: its value per preset and stage."""
    per_preset = []
    for preset, stages in PRESETS.items():
        values = [str(stages[k][0].get(name, getattr(TrainConfig, name))) for k in STAGES]
        per_preset.append(f"{preset} " + "/".join(values))
    return "set by --preset, per stage perceptual/tokenizer/var: " + ", ".join(per_preset)


def preset_default_model(name):
    """--help text for a model setting the presets decide (tokenizer): its value per preset."""
    return "set by --preset: " + ", ".join(f"{p} {stages['tokenizer'][1].get(name, getattr(TokenizerConfig, name))}"
                                            for p, stages in PRESETS.items())


def parse_args(doc, argv=None) -> dict:
    """Flags for every TrainConfig field and MODEL_FLAGS. Only the flags actually typed are returned."""
    parser = OneLineParser(prog="python train.py", description=doc.split("\n\n")[0], epilog=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    checks = {"seed": seed, "warmup_steps": non_negative_int, "stop_at": non_negative_int, "weight_decay": non_negative,
              "lr": positive, "grad_clip": positive, "ema_decay": below_one, "train_images": non_negative_int}
    for f in fields(TrainConfig):
        option, meta = "--" + f.name.replace("_", "-"), f.metadata
        if f.type in (bool, "bool"):
            parser.add_argument(option, action="store_true", default=None, help=meta["help"])
            continue
        decided = any(f.name in stages[k][0] for stages in PRESETS.values() for k in STAGES)
        kind = checks.get(f.name, positive_int if f.type in (int, "int") else str)
        parser.add_argument(option, type=kind, default=None, choices=meta.get("choices"),
                            metavar=None if "choices" in meta else f.name.upper(),
                            help=meta["help"] if f.default == "" else  # (their help says what the default is)
                            f"{meta['help']} (default: {preset_default(f.name) if decided else f.default})")
    parser.add_argument("--scales", type=parse_scales, metavar="SIDES",
                        help=f"tokenizer: {MODEL_FLAGS['scales'][1]} (default: 1,2,3,4,5,6,8)")
    for name in ("adversarial_weight", "perceptual_weight"):
        parser.add_argument("--" + name.replace("_", "-"), type=non_negative, metavar="W",
                            help=f"tokenizer: {MODEL_FLAGS[name][1]} (default: {getattr(TokenizerConfig, name)})")
    for name in ("disc_start", "disc_warmup"):
        parser.add_argument("--" + name.replace("_", "-"), type=non_negative_int, metavar="STEPS",
                            help=f"tokenizer: {MODEL_FLAGS[name][1]} (default: {preset_default_model(name)})")
    for name in ("dim", "depth", "heads"):
        per_preset = ", ".join(f"{preset} {stages['var'][1].get(name, getattr(VARConfig, name))}"
                               for preset, stages in PRESETS.items())
        parser.add_argument("--" + name, type=positive_int, metavar="N",
                            help=f"var, ar: {MODEL_FLAGS[name][1]} (default: set by --preset: {per_preset})")
    parser.add_argument("--attention", choices=("sdpa", "flex", "auto"),
                        help=f"var, ar: {MODEL_FLAGS['attention'][1]} (default: {VARConfig.attention})")
    typed = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if typed.get("resume") and typed.get("force"):  # one would silently win over the other
        parser.error("--resume continues the run in --out-dir, --force starts it over: give one of them")
    return typed


def parse_scales(text):
    """'1,2,3,4,5,6,8' -> (1, 2, 3, 4, 5, 6, 8): increasing sides ending at the 8×8 latent."""
    try:
        scales = tuple(int(s) for s in text.split(","))
    except ValueError:
        scales = ()
    if not scales or scales[0] < 1 or any(a >= b for a, b in zip(scales, scales[1:])) or scales[-1] != 8:
        raise argparse.ArgumentTypeError(f"{text}: give increasing sides ending at 8 (the tokenizer's latent is 8×8), "
                                         "e.g. 1,2,3,4,5,6,8 (VAR) or 8 (AR)")
    return scales

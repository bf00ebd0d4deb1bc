"""The one-GPU training path's pieces, checked on the CPU where they can be: torch.compile,
metrics that stay on the device between log lines, the batches a step draws on its device."""
import shutil
from dataclasses import replace

import pytest
import torch

import train
from minivar.data import EpochSampler, load_cifar10
from minivar.tokenizer import TokenizerConfig
from minivar.training.presets import PRESETS, TrainConfig
from minivar.training.stages import TokenizerStage
from tests.conftest import write_fake_cifar


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-path")
    write_fake_cifar(root / "data" / "cifar-10-batches-py")
    train.main(["--preset", "tiny", "--stage", "tokenizer", "--data-dir", str(root / "data"), "--out-dir",
                str(root / "eager")])
    return root


@pytest.mark.slow
def test_a_step_returns_its_metrics_as_tensors(setup):
    """Reading a number off a GPU waits for it: the loop reads metrics only when it logs."""

    cfg = replace(TrainConfig(), **PRESETS["tiny"]["tokenizer"][0])
    model_cfg = TokenizerConfig(**{**PRESETS["tiny"]["tokenizer"][1], "perceptual_weight": 0, "disc_start": 0})
    data = load_cifar10(setup / "data", "train"), load_cifar10(setup / "data", "test")
    stage = TokenizerStage(cfg, model_cfg, *data, torch.device("cpu"))
    optimizer = torch.optim.AdamW(stage.model.parameters())
    metrics = stage.train_step(0, optimizer, 1e-3, 1.0)
    assert metrics and all(isinstance(v, torch.Tensor) for v in metrics.values())


def test_the_sampler_hands_out_batches_on_its_device():
    sampler = EpochSampler(100, 16, seed=1, device="cpu")
    assert sampler.indices(3).device.type == "cpu" and sampler.uniforms(1, 3).device.type == "cpu"
    assert torch.equal(sampler.indices(3), EpochSampler(100, 16, seed=1).indices(3))


@pytest.mark.slow
def test_torch_compile_trains_one_tiny_stage_like_eager(setup):
    """--compile on the CPU, a few steps of the VAR stage: the same model to float precision."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on the CPU needs a C compiler (gcc or cc), none found")
    runs = {}
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        out = setup / f"var-{name}"
        out.mkdir()
        shutil.copy(setup / "eager" / "tokenizer.pt", out / "tokenizer.pt")
        try:
            train.main(["--preset", "tiny", "--stage", "var", "--max-steps", "6", "--eval-every", "6",
                        "--data-dir", str(setup / "data"), "--out-dir", str(out), *flags])
        except Exception as e:  # inductor's own failures (no compiler for this Python, ...)
            if name == "compiled":
                pytest.skip(f"torch.compile does not work on this CPU setup: {type(e).__name__}: {str(e)[:200]}")
            raise
        runs[name] = torch.load(out / "var.pt", weights_only=True)["model"]
    eager, compiled = runs["eager"], runs["compiled"]
    assert eager.keys() == compiled.keys()
    assert all(torch.allclose(eager[k], compiled[k], atol=1e-4, rtol=1e-3) for k in eager)


@pytest.mark.slow
def test_bf16_autocast_trains_the_tiny_stages_on_the_cpu_and_auto_saves_its_choice(setup, capsys):
    """The GPU's precision path end to end on the CPU: both stages train under --dtype bf16, and
    --dtype auto decides once, says what it took, and saves it for --resume."""
    data = ["--data-dir", str(setup / "data")]
    out = setup / "bf16"
    train.main(["--preset", "tiny", "--stage", "tokenizer", "--max-steps", "4", "--eval-every", "4", "--dtype", "bf16",
                *data, "--out-dir", str(out)])
    train.main(["--preset", "tiny", "--stage", "var", "--max-steps", "4", "--eval-every", "4", "--dtype", "auto",
                *data, "--out-dir", str(out)])
    said = capsys.readouterr().out
    tokenizer, var = (torch.load(out / f"{kind}.pt", weights_only=True) for kind in ("tokenizer", "var"))
    assert tokenizer["train_config"]["dtype"] == "bf16"
    chosen = var["train_config"]["dtype"]
    assert chosen in ("fp32", "bf16") and f"--dtype auto: {chosen} (" in said
    assert all(torch.isfinite(v).all() for v in (*tokenizer["model"].values(), *var["model"].values()))

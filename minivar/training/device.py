"""Where the computation runs: device choice, mixed precision, seeding.

One code path for CUDA, Apple MPS and CPU. Autocast is used only where it helps:
bf16 on CUDA GPUs that support it; fp32 on MPS and CPU.
"""
import platform
import random
import resource

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda, then mps, then cpu. An explicit name is checked, not trusted."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps: MPS is not available here; use --device auto or cpu")
    if not (name == "cpu" or name == "mps" or name.startswith("cuda")):
        raise ValueError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA GPUs that support it; off elsewhere (on MPS and CPU fp32 is as
    fast for these small models, and MPS autocast is still patchy)."""
    enabled = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def conv_layout(device: torch.device):
    """Memory layout for the convolutional networks while they train (tokenizer, perceptual
    classifier, discriminator). On the CPU, oneDNN's convolutions run faster on channels-last
    (NHWC) tensors: at the cpu preset a tokenizer step with the perceptual loss took 0.79
    instead of 0.97 s and a classifier step 0.17 instead of 0.26 s (2-core AMD EPYC, the two
    layouts timed one after the other). The maths is the same up to float rounding: only the
    order of the numbers in memory changes. Elsewhere the default layout: not measured there."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def peak_memory_gib(device):
    """Peak memory so far: allocated GPU memory on CUDA, else the process's resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The torch RNG states a training step may touch, for exact resume.
    (minivar draws all its randomness from torch; the data order is a pure function
    of the step, see data.py, so it needs no state of its own.)"""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def describe_machine(device: torch.device) -> dict:
    """What ran a measurement: the GPU's name, or the CPU's model name and thread count."""
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() often says only "x86_64"
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), "gpu": gpu, "cpu": cpu, "threads": torch.get_num_threads(),
            "torch": torch.__version__}

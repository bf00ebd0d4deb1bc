"""Where the computation runs: device choice, mixed precision, seeding.

One code path for CUDA, Apple MPS and CPU, and one for precision on all three: --dtype
fp32, or bf16 autocast (matmuls and convolutions in bf16; what needs the precision stays in
fp32: layer norms and losses by autocast's own rules, the head's logits and the quantizer by
their code). So the tests run a GPU's precision path on a CPU.

Whether bf16 is faster depends on the machine: on CUDA GPUs it is (their tensor cores), and
--dtype auto takes it there. CPUs differ by far: on one with AMX (recent Intel Xeons) bf16
matmuls run several times faster than fp32; on a CPU without bf16 instructions (a 2-core
AMD EPYC, Zen 3) the cpu preset's training step ran 19× slower in bf16 for VAR and 16× for
the tokenizer (results/README.md, `python -m minivar.studies.bench step`). So on a CPU or
MPS, auto times the stage's training step both ways and keeps the faster (after a quick
matmul check that skips the timing where bf16 is hopeless).
"""
import platform
import random
import resource
import time

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


DTYPES = ("auto", "fp32", "bf16")  # the values of --dtype


def autocast(device: torch.device, dtype="fp32"):
    """bf16 autocast for dtype "bf16", on any device; nothing for "fp32"."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


def bf16_unavailable(device: torch.device):
    """Why bf16 autocast cannot run on this device, in a few words; None if it can."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(device)} has no bf16"
    try:
        with autocast(device, "bf16"):
            torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)
    except (RuntimeError, TypeError) as e:  # e.g. an older MPS
        return f"bf16 autocast fails on {device.type} ({str(e).splitlines()[0][:80]})"
    return None


def bf16_matmul_slowdown(device: torch.device, n=256, repeats=3):
    """Seconds of a bf16 n×n matmul over an fp32 one: far above 1 where the CPU has no bf16 instructions."""
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=device, dtype=dtype)
        a @ a  # warm-up
        t = time.perf_counter()
        for _ in range(repeats):
            a @ a
        seconds[dtype] = time.perf_counter() - t
    return seconds[torch.bfloat16] / seconds[torch.float32]


def choose_dtype(name, device: torch.device, time_step=None):
    """--dtype: fp32 or bf16 as asked (bf16 refused in one line where it cannot run); auto: bf16
    on a CUDA GPU that has it; elsewhere the faster of time_step("fp32") and time_step("bf16")
    (the seconds of one training step each way), fp32 if there is no step to time. Returns
    (dtype, why: a few words for the user)."""
    if name not in DTYPES:
        raise ValueError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    why = bf16_unavailable(device) if name != "fp32" else None
    if name == "bf16" and why:
        raise ValueError(f"--dtype bf16: {why}; use --dtype fp32")
    if name != "auto":
        return name, "as asked"
    if why:
        return "fp32", why
    if device.type == "cuda":
        return "bf16", "a CUDA GPU with bf16"
    if time_step is None:
        return "fp32", f"on {device.type}, bf16 pays only on some machines: --dtype bf16 to try it"
    slowdown = bf16_matmul_slowdown(device)
    if slowdown > 4:  # no bf16 instructions: the step itself is not worth timing
        return "fp32", f"a bf16 matmul is {slowdown:.0f}x slower than fp32 here"
    seconds = {dtype: time_step(dtype) for dtype in ("fp32", "bf16")}
    best = min(seconds, key=seconds.get)
    return best, "one training step " + ", ".join(f"{d} {t * 1e3:.0f} ms" for d, t in seconds.items())


def synchronize(device: torch.device):
    """Wait for the device's queued work (a GPU runs asynchronously: timing needs this)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_one_step(stage, dtype, repeats=2):
    """Seconds of one forward and backward of a training stage's step in `dtype` (the median of
    `repeats`, after one warm-up). No optimizer step; the model's buffers (such as the tokenizer's
    code counts), its gradients and the random state are left as they were."""
    stage.set_dtype(dtype)
    buffers = {name: b.clone() for name, b in stage.model.named_buffers()}
    times = []
    with torch.random.fork_rng(devices=[stage.device] if stage.device.type == "cuda" else []):
        for _ in range(repeats + 1):
            synchronize(stage.device)
            t = time.perf_counter()
            stage.loss(0, log=False)[0].backward()
            synchronize(stage.device)
            times.append(time.perf_counter() - t)
    stage.model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, b in stage.model.named_buffers():
            b.copy_(buffers[name])
    return sorted(times[1:])[repeats // 2]


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

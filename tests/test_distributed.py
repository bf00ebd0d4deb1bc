"""torchrun: data-parallel training with 2 CPU processes (gloo) equals one process."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minivar.data import EpochSampler
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training.device import conv_layout
from tests.conftest import run_script, write_fake_cifar

ENV = {**os.environ, "MINIVAR_CIFAR_URL": "file:///nonexistent/cifar-10-python.tar.gz", "OMP_NUM_THREADS": "1"}
TINY = ["--preset", "tiny", "--batch-size", "16", "--max-steps", "12", "--eval-every", "6"]


def tiny(args):
    """TINY, and for runs that train a tokenizer, re-seeding often enough to happen in 12 steps
    (train.py refuses a tokenizer flag for a command that trains no tokenizer)."""
    return TINY + ([] if "var" in args else ["--reseed-every", "4"])


def torchrun(*args):
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *tiny(args),
                        *args, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def single(*args):
    result = run_script("train.py", *tiny(args), *args, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_ranks_see_disjoint_halves_of_the_same_batches():
    whole = EpochSampler(100, 16, seed=3)
    halves = [EpochSampler(100, 16, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 5, 6, 13):  # 6 batches per epoch: steps 6 and 13 are in later epochs
        parts = [h.indices(step) for h in halves]
        assert torch.equal(torch.cat(parts), whole.indices(step)) and not set(parts[0].tolist()) & set(parts[1].tolist())
        assert torch.equal(torch.cat([h.uniforms(1, step) for h in halves]), whole.uniforms(1, step))


def tiny_tokenizer_and_batch():
    """The same tokenizer and 16 images in every process that calls it, in the training layout."""
    torch.manual_seed(0)
    layout = conv_layout(torch.device("cpu"))
    model = Tokenizer(TokenizerConfig(widths=(16, 32, 32), res_blocks=1, vocab_size=64, latent_dim=8))
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model.to(memory_format=layout), images.contiguous(memory_format=layout)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def half_batch_worker(rank, port, out):
    """One of two gloo processes: backward on its half of the batch through DDP, rank 0 saves the gradients."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, images = tiny_tokenizer_and_batch()
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # held: the all-reduce hooks die with the wrapper
    ddp(images[8 * rank:8 * (rank + 1)])[1].backward()
    if rank == 0:
        torch.save(gradients(model), out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradient_of_two_half_batches_is_the_whole_batch_gradient(tmp_path):
    """One backward, no optimizer: the check the 12-step comparison below cannot make tightly,
    because Adam turns rounding-sized gradient differences into learning-rate-sized steps."""
    model, images = tiny_tokenizer_and_batch()
    model(images)[1].backward()
    whole = gradients(model)
    with socket.socket() as s:  # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(half_batch_worker, args=(port, str(tmp_path / "grads.pt")), nprocs=2)
    halves = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert halves.keys() == whole.keys()
    worst = max((halves[k] - whole[k]).norm() / whole[k].norm().clamp_min(1e-12) for k in whole)
    assert worst < 1e-4, f"largest relative gradient difference {worst:.2e}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reseed_worker(rank, port, out):
    """One of two gloo processes re-seeding the same tokenizer's dead codes; rank 1 first draws one
    extra random number, as code that ran on one rank only would (a warning's sampling, say)."""
    from minivar.training.codebook import reseed_in_training
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model, images = tiny_tokenizer_and_batch()
    quantizer = model.quantizer
    quantizer.hits_KV[:, :32] = 1.0  # codes 32..63 unused: dead
    latent = model.encoder(images[8 * rank:8 * (rank + 1)]).detach()
    if rank == 1:
        torch.rand(1)
    optimizer = torch.optim.AdamW(model.parameters())
    metrics = reseed_in_training(quantizer, latent, optimizer)
    torch.save({"codebook": quantizer.codebook.weight.detach().clone(), "reseeded": metrics["reseeded"]},
               f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_reseeding_under_torchrun_gives_every_rank_rank_zero_s_codebook(tmp_path):
    mp.spawn(reseed_worker, args=(free_port(), str(tmp_path / "codes")), nprocs=2)
    zero, one = (torch.load(tmp_path / f"codes.{r}", weights_only=True) for r in (0, 1))
    assert zero["reseeded"] == one["reseeded"] == 32
    torch.manual_seed(0)
    before = tiny_tokenizer_and_batch()[0].quantizer.codebook.weight
    assert not torch.equal(zero["codebook"][32:], before[32:])  # the dead codes moved
    assert torch.equal(zero["codebook"], one["codebook"])  # to the same places on both ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tokenizer then VAR, once in one process and once under torchrun with 2 processes.
    Both tokenizers use the single run's perceptual network: its BatchNorm layers normalise
    each process's half batch, so under torchrun it is a different network. The torchrun
    VAR stage starts from the single run's tokenizer: the two tokenizers agree to float
    precision, but that can flip a few tokens, and VAR would train on other data."""
    root = tmp_path_factory.mktemp("ddp")
    write_fake_cifar(root / "data" / "cifar-10-batches-py")
    data = ["--data-dir", root / "data"]
    single(*data, "--out-dir", root / "one")
    (root / "two").mkdir()
    for name in ("perceptual.pt", "perceptual_log.jsonl"):
        (root / "two" / name).write_bytes((root / "one" / name).read_bytes())
    logs = torchrun("--stage", "tokenizer", *data, "--out-dir", root / "two")
    (root / "two" / "tokenizer.pt").rename(root / "two" / "tokenizer_ddp.pt")
    (root / "two" / "tokenizer.pt").write_bytes((root / "one" / "tokenizer.pt").read_bytes())
    logs_var = torchrun("--stage", "var", *data, "--out-dir", root / "two")
    return root, data, logs.stdout + logs_var.stdout


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def close(a, b, atol=1e-4):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-4) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tokenizer", "var"])
def test_two_processes_equal_one_with_the_same_global_batch(runs, stage):
    root, _, _ = runs
    two_name = "tokenizer_ddp.pt" if stage == "tokenizer" else "var.pt"
    one, two = weights(root / "one" / f"{stage}.pt"), weights(root / "two" / two_name)
    # The all-reduce sums the half batches' gradients in another order than one process does. Adam
    # divides each gradient by its own running size, so a weight whose gradient is near zero can move
    # by up to the learning rate (tiny tokenizer: 2e-3) per step on a rounding difference, and a
    # rounding difference can flip a token, whose code then moves instead of another (the largest
    # differences are in the codebook). So the tokenizer is compared as a whole: its weights differ by
    # 0.6% of their norm in our runs (a single weight by up to 8e-3), while the 12 steps move them by about 10%.
    if stage == "tokenizer":
        assert one.keys() == two.keys()
        diff = sum(((one[k] - two[k]).float() ** 2).sum() for k in one).sqrt()
        assert diff < 0.02 * sum((one[k].float() ** 2).sum() for k in one).sqrt()
    else:
        assert close(one, two, atol=1e-4)


@pytest.mark.slow
def test_only_rank_zero_writes_and_prints(runs):
    root, _, logs = runs
    files = sorted(p.name for p in (root / "two").iterdir() if not p.name.startswith(("tokens-", "tokenizer_ddp")))
    assert files == sorted(p.name for p in (root / "one").iterdir() if not p.name.startswith("tokens-"))
    assert logs.count("tokenizer: done") == 1 and logs.count("var: done") == 1 and logs.count("× 2 processes") == 2
    assert not list((root / "two").glob("*.tmp"))


@pytest.mark.slow
def test_torchrun_interrupted_and_resumed_ends_where_uninterrupted_ends(runs):
    root, data, _ = runs
    out = root / "resumed"
    out.mkdir()
    (out / "tokenizer.pt").write_bytes((root / "two" / "tokenizer.pt").read_bytes())
    torchrun("--stage", "var", *data, "--out-dir", out, "--stop-at", "5")
    assert torch.load(out / "var.pt", weights_only=True)["step"] == 5
    torchrun("--stage", "var", *data, "--out-dir", out, "--resume")
    assert close(weights(out / "var.pt"), weights(root / "two" / "var.pt"), atol=1e-6)


@pytest.mark.slow
def test_a_batch_that_does_not_split_is_one_line(runs, tmp_path):
    root, data, _ = runs
    result = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *TINY,
                        "--batch-size", "15", "--stage", "tokenizer", *data, "--out-dir", tmp_path, env=ENV)
    assert result.returncode != 0 and "--batch-size 15 does not split evenly over 2 processes" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("target", ["one worker", "every process"])
def test_a_signal_under_torchrun_stops_every_process_at_one_saved_step(target, tmp_path):
    """SIGTERM to one worker, or Ctrl-C (SIGINT to the whole process group): every rank stops at the
    same step, rank 0 saves it and says "interrupted", no worker dies on a closed connection, and
    the exit status says the run did not finish. A single process then resumes it to the end."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    out, common = tmp_path / "out", ["--preset", "tiny", "--data-dir", str(tmp_path / "data")]
    single("--stage", "tokenizer", "--perceptual-weight", "0", *common, "--out-dir", out)
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                "train.py", *common, "--stage", "var", "--max-steps", "3000", "--eval-every", "5",
                                "--out-dir", str(out)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while not (out / "var.pt").exists() and time.time() < deadline:  # a first checkpoint: training is under way
        time.sleep(0.1)
    if target == "one worker":
        workers = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(workers[-1]), signal.SIGTERM)
    else:
        os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=180)
    assert process.returncode != 0 and "interrupted at step" in err and "stopped (--stop-at)" not in err
    assert "Connection closed" not in err and "Connection reset" not in err, err[-3000:]
    ckpt = torch.load(out / "var.pt", weights_only=True)
    assert 5 <= ckpt["step"] < 3000 and not ckpt["finished"]
    assert f"interrupted at step {ckpt['step']}: saved" in err
    single("--stage", "var", *common, "--out-dir", out, "--resume", "--max-steps", str(ckpt["step"] + 5))
    assert torch.load(out / "var.pt", weights_only=True)["finished"]

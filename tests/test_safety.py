"""Nothing lost, nothing run: interrupts, overwrites, divergence, hostile or damaged files, a full disk.

Most run train.main in this process on the tiny preset (a second or two each); the tests
that interrupt a real process at random moments are marked slow.
"""
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train
from minivar import data
from minivar.training import files
from minivar.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tests.conftest import OFFLINE, ROOT, write_fake_cifar



def run(data_dir, out, *args):
    train.main(["--preset", "tiny", "--data-dir", str(data_dir), "--out-dir", str(out), *map(str, args)])


def exits(data_dir, out, *args):
    """Run train.main, expecting it to stop; returns the exit code, or the one-line message
    (sys.exit("error: ...") prints it and exits with 1 when the interpreter ends)."""
    with pytest.raises(SystemExit) as e:
        run(data_dir, out, *args)
    assert e.value.code not in (0, None)
    return e.value.code


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """Uninterrupted runs of every stage, the yardstick of exact resume."""
    out = tmp_path_factory.mktemp("reference")
    run(data_dir, out)
    return out


def weights(path):
    """The weights, and for a generator its moving average too: resuming must restore both exactly."""
    ckpt = torch.load(path, weights_only=True)
    return {**ckpt["model"], **{f"ema.{k}": v for k, v in ckpt.get("ema", {}).items()}}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def copy_dependency(stage, reference, out):
    out.mkdir(exist_ok=True)
    needed = "perceptual.pt" if stage == "tokenizer" else "tokenizer.pt"
    shutil.copy(reference / needed, out / needed)


@pytest.mark.slow
@pytest.mark.parametrize("stage, at", [("tokenizer", 12), ("var", 7)])
def test_ctrl_c_right_after_the_optimizer_step_saves_a_whole_step(stage, at, data_dir, reference, tmp_path,
                                                                   monkeypatch):
    """The worst moment for a KeyboardInterrupt: weights updated, bookkeeping not done. The
    tokenizer is interrupted after its discriminator started (tiny: step 10)."""
    out = tmp_path / "out"
    copy_dependency(stage, reference, out)
    calls, step = [0], torch.optim.AdamW.step

    def step_then_interrupt(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
    assert exits(data_dir, out, "--stage", stage) == 130
    monkeypatch.undo()
    ckpt = load_checkpoint(out / f"{stage}.pt", stage)
    assert ckpt["step"] == at and not ckpt["finished"] and ckpt["optimizer"]["state"][0]["step"] == at
    run(data_dir, out, "--stage", stage, "--resume")
    assert same(weights(out / f"{stage}.pt"), weights(reference / f"{stage}.pt"))
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_a_fresh_run_refuses_to_replace_a_finished_one(data_dir, reference, capsys):
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.suffix in (".pt", ".jsonl")}
    message = exits(data_dir, reference, "--stage", "tokenizer")
    assert message.startswith("error: ") and "\n" not in message
    assert "--resume" in message and "--force" in message and "--out-dir" in message
    assert before == {p.name: p.read_bytes() for p in reference.iterdir() if p.suffix in (".pt", ".jsonl")}


@pytest.mark.slow
def test_force_starts_over(data_dir, reference, tmp_path):
    out = tmp_path / "out"
    copy_dependency("var", reference, out)
    run(data_dir, out, "--stage", "var", "--stop-at", "5")
    run(data_dir, out, "--stage", "var", "--force")
    assert same(weights(out / "var.pt"), weights(reference / "var.pt"))


@pytest.mark.slow
def test_all_resumes_an_unfinished_stage_instead_of_skipping_it(data_dir, reference, tmp_path, capsys):
    out = tmp_path / "out"
    run(data_dir, out, "--stage", "tokenizer", "--stop-at", "12")  # trains the perceptual network first
    run(data_dir, out)
    assert "tokenizer.pt is finished, skipping" not in capsys.readouterr().out
    for stage in ("perceptual", "tokenizer", "var"):
        assert load_checkpoint(out / f"{stage}.pt")["finished"]
        assert same(weights(out / f"{stage}.pt"), weights(reference / f"{stage}.pt")), stage


@pytest.mark.slow
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(data_dir, reference, tmp_path):
    out = tmp_path / "out"
    copy_dependency("var", reference, out)
    run(data_dir, out, "--stage", "var", "--stop-at", "5")
    good = (out / "var.pt").read_bytes()
    message = exits(data_dir, out, "--stage", "var", "--resume", "--lr", "1e6")
    assert "not a finite number, or 10⁴ times its start, at step" in message
    assert "diverged" in message and "--lr" in message
    assert (out / "var.pt").read_bytes() == good
    fresh = tmp_path / "fresh"
    copy_dependency("var", reference, fresh)
    assert "diverged" in exits(data_dir, fresh, "--stage", "var", "--lr", "1e6")
    assert not (fresh / "var.pt").exists()


@pytest.mark.parametrize("args, message", [
    (["--lr", "inf"], "--lr: 'inf'"), (["--lr", "nan"], "--lr: 'nan'"), (["--lr", "-1"], "--lr: '-1'"),
    (["--grad-clip", "nan"], "--grad-clip: 'nan'"), (["--grad-clip", "0"], "--grad-clip: '0'"),
    (["--max-steps", "0"], "--max-steps: '0'"), (["--perceptual-weight", "-1"], "--perceptual-weight: '-1'"),
])
def test_train_checks_numbers_before_any_work(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        train.main(args + ["--out-dir", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--cfg-scale", "nan"], "'nan'"), (["--cfg-scale", "inf"], "'inf'"), (["--cfg-scale", "-1"], "0 or more"),
    (["--temperature", "nan"], "'nan'"), (["--temperature", "0"], "above 0"), (["--top-p", "0"], "(0, 1]"),
    (["--top-p", "nan"], "'nan'"), (["--top-k", "-3"], "0 or more"),
])
def test_sample_checks_numbers_before_any_work(args, message, capsys):
    import sample
    with pytest.raises(SystemExit):
        sample.main(args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:")


def test_a_crafted_batch_never_runs_its_code(tmp_path):
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(data.DataError, match="data_batch_1 is not a valid CIFAR-10 batch: .*system"):
        data.load_cifar10(tmp_path, "train")
    assert not marker.exists()


@pytest.mark.parametrize("batch, problem", [
    ({b"labels": [0]}, "b'data'"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "N×3072"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
])
def test_a_batch_that_is_not_cifar_is_one_clear_error(batch, problem, tmp_path):
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(data.DataError, match="test_batch") as e:
        data.load_cifar10(tmp_path, "test")
    assert problem in str(e.value)


def test_a_copy_that_differs_from_the_official_files_is_used_with_one_notice(tmp_path, monkeypatch, capsys):
    folder = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    import hashlib
    monkeypatch.setattr(data, "OFFICIAL_MD5", {n: hashlib.md5((folder / n).read_bytes()).hexdigest()
                                               for n in data.SPLIT_FILES["train"]})
    monkeypatch.setattr(data, "_checked", set())
    data.load_cifar10(tmp_path, "train")
    assert capsys.readouterr().out == ""  # byte for byte the "official" files: nothing to say
    raw = bytearray((folder / "data_batch_2").read_bytes())
    raw[-600:-200] = os.urandom(400)  # inside the pixel array: still a valid batch
    (folder / "data_batch_2").write_bytes(bytes(raw))
    monkeypatch.setattr(data, "_checked", set())
    images, _ = data.load_cifar10(tmp_path, "train")
    notice = capsys.readouterr().out.strip().splitlines()
    assert len(notice) == 1 and "data_batch_2" in notice[0] and "official" in notice[0] and len(images) == 200


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(data_dir, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    copy_dependency("var", reference, out)
    run(data_dir, out, "--stage", "var", "--stop-at", "10")
    good = (out / "var.pt").read_bytes()

    fsync = os.fsync

    def full(fd):  # the disk fills up when the checkpoint is written
        if ".pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", full)
    message = exits(data_dir, out, "--stage", "var", "--resume")
    assert message.startswith("error: no space left") and "var.pt" in message and "\n" not in message
    assert (out / "var.pt").read_bytes() == good and not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_a_damaged_token_cache_is_rebuilt_with_a_notice(data_dir, reference, tmp_path, capsys):
    out = tmp_path / "out"
    copy_dependency("var", reference, out)
    run(data_dir, out, "--stage", "var", "--stop-at", "2")
    cache = next(out.glob("tokens-*.pt"))
    cache.write_bytes(cache.read_bytes()[:1000])  # cut short, as by a full disk or a crash elsewhere
    run(data_dir, out, "--stage", "var", "--resume")
    assert "rebuilding" in capsys.readouterr().err
    assert same(weights(out / "var.pt"), weights(reference / "var.pt"))


def test_temporaries_of_a_killed_save_are_removed_and_outputs_get_normal_permissions(tmp_path):
    stale = tmp_path / "x.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint({"kind": "test"}, tmp_path / "x.pt")
    assert not stale.exists() and load_checkpoint(tmp_path / "x.pt")["kind"] == "test"
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "x.pt").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.slow
def test_resume_cuts_the_log_back_to_the_checkpoint(data_dir, reference, tmp_path):
    out = tmp_path / "out"
    copy_dependency("var", reference, out)
    run(data_dir, out, "--stage", "var", "--stop-at", "10")
    with open(out / "var_log.jsonl", "a") as log:  # what a run killed after its checkpoint logged
        log.write(json.dumps({"step": 15, "loss": 1.0}) + "\n" + '{"step": 1')
    run(data_dir, out, "--stage", "var", "--resume")
    steps = [json.loads(line)["step"] for line in (out / "var_log.jsonl").read_text().splitlines()
             if "eval" not in line]
    assert steps == [json.loads(line)["step"] for line in (reference / "var_log.jsonl").read_text().splitlines()
                     if "eval" not in line]


@pytest.mark.parametrize("flag", ["--data-dir", "--out-dir"])
def test_a_folder_flag_naming_a_file_is_one_line(flag, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", flag, str(tmp_path / "file")])
    assert e.value.code == f"error: {flag} {tmp_path / 'file'} is a file, not a folder"


@pytest.mark.slow
def test_a_failed_download_leaves_no_folders_behind(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--preset", "tiny", "--data-dir", str(tmp_path / "a" / "b"),
                             "--out-dir", str(tmp_path / "out")], cwd=ROOT, env=OFFLINE, capture_output=True, text=True)
    assert result.returncode != 0 and "could not download" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, message", [
    (b"\x00" * 64, "not a PyTorch checkpoint"),
    ("truncated", "truncated or damaged"),
    ("code", "refused, since loading them could run code"),
])
def test_unreadable_checkpoints_are_named_for_what_they_are(content, message, tmp_path):
    path = tmp_path / "bad.pt"
    if content == "truncated":
        torch.save({"kind": "var", "w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:1500])
    elif content == "code":
        torch.save({"kind": "var", "hook": shutil.rmtree}, path)  # a global that weights_only refuses
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert message in str(e.value) and str(e.value).endswith(("file", "weights_only=True)", "train.py"))


def test_ctrl_c_during_start_up_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "load_cifar10", interrupted)
    assert exits(data_dir, tmp_path / "out") == 130
    assert capsys.readouterr().err.strip() == "interrupted; every checkpoint written so far is kept"
    assert not (tmp_path / "out").exists()


# --- real signals at random moments, in a real process (slow) ---

LONGER = ["--max-steps", "40", "--eval-every", "5", "--log-every", "5"]


@pytest.fixture(scope="module")
def long_reference(data_dir, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("long")
    shutil.copy(reference / "perceptual.pt", out / "perceptual.pt")
    for stage in ("tokenizer", "var"):
        run(data_dir, out, "--stage", stage, *LONGER)
    return out


def start(data_dir, out, stage, *extra):
    return subprocess.Popen([sys.executable, "train.py", "--preset", "tiny", "--stage", stage, "--data-dir",
                             str(data_dir), "--out-dir", str(out), *LONGER, *extra], cwd=ROOT, env=OFFLINE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


INTERRUPTS = int(os.environ.get("MINIVAR_INTERRUPTS", "2"))  # per stage and signal: 8 interrupts in all


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tokenizer", "var"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_random_interrupts_then_resume_give_the_uninterrupted_weights(stage, sig, data_dir, long_reference, tmp_path):
    rng = np.random.default_rng(sig * 10 + len(stage))
    for trial in range(INTERRUPTS):
        out = tmp_path / f"trial{trial}"
        out.mkdir()
        shutil.copy(long_reference / ("perceptual.pt" if stage == "tokenizer" else "tokenizer.pt"), out)
        if stage == "var":  # the token cache too, so that the interrupt lands in training
            for cache in long_reference.glob("tokens-*.pt"):
                shutil.copy(cache, out)
        process = start(data_dir, out, stage)
        deadline = time.time() + 60
        while not (out / f"{stage}.pt").exists() and time.time() < deadline:  # a first checkpoint to come back to
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 2.0))
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err, err
        resumed = start(data_dir, out, stage, "--resume")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert same(weights(out / f"{stage}.pt"), weights(long_reference / f"{stage}.pt")), (trial, err)
        assert not list(out.glob("*.tmp"))

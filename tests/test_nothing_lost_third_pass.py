"""Hostile input, third pass: a lock that followed a symlink, a token cache that missed changed
data, a 16-bit PNG read as white, and messages that named the wrong file or cause. One test
each, named after what it protects; every one runs in this process, in seconds."""
import errno
import os
import signal
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

import sample
import train
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training import files, tokens
from minivar.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minivar.training.divergence import Diverged, DivergenceGuard
from minivar.training.files import FileError, RunLock, atomic_write
from minivar.training.presets import PRESETS
from minivar.training.tokens import cached_tokens
from tests.conftest import fill_the_disk
from tests.test_nothing_lost import dead_pid, one_line

TINY_TOKENIZER = TokenizerConfig(**{**PRESETS["tiny"]["tokenizer"][1], "perceptual_weight": 0.0})


# --- 1. the run lock writes into its own file only ---

@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_the_lock_never_writes_through_a_link_into_another_file(link, data_dir, tmp_path):
    precious, out = tmp_path / "precious.txt", tmp_path / "out"
    precious.write_text("precious")
    out.mkdir()
    (os.symlink if link == "symlink" else os.link)(precious, out / ".lock")
    message = one_line(data_dir, out, "--stage", "var")
    assert precious.read_text() == "precious"
    assert f"{out / '.lock'} is a {link}" in message and "left untouched" in message


def test_a_symlink_put_there_after_the_check_is_refused_by_the_kernel(tmp_path, monkeypatch):
    """O_NOFOLLOW: with the check before opening skipped (as if the link appeared just after it)."""
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".lock").symlink_to(precious)
    monkeypatch.setattr(RunLock, "refuse_what_is_not_a_lock_file", lambda self, status=None: None)
    with pytest.raises(FileError, match="is a symlink, not a lock file"):
        RunLock(tmp_path / "out").__enter__()
    assert precious.read_text() == "precious"


def test_a_lock_that_is_a_folder_is_one_line_naming_it(data_dir, tmp_path):
    (tmp_path / "out" / ".lock").mkdir(parents=True)
    assert f"{tmp_path / 'out' / '.lock'} is a folder, not a lock file" in one_line(data_dir, tmp_path / "out")


def test_a_full_disk_or_a_read_only_folder_while_locking_names_the_lock_and_the_cause(tmp_path, monkeypatch):
    fill_the_disk(monkeypatch, files)
    with pytest.raises(FileError) as e:
        RunLock(tmp_path / "full").__enter__()
    assert str(e.value).startswith(f"no space left on the disk of {tmp_path / 'full'}") and ".lock" in str(e.value)
    assert not (tmp_path / "full").exists()  # the folder the run made for itself goes with it
    monkeypatch.undo()

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(files.os, "open", read_only)
    with pytest.raises(FileError) as e:
        RunLock(tmp_path).__enter__()
    assert str(e.value) == f"cannot take the run's lock {tmp_path / '.lock'}: Read-only file system"


# --- 2. the token cache is keyed by everything the tokens depend on ---

def split(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def fast_tokens(tokenizer, images, device, flip=False, **kwargs):
    """A stand-in for tokenize (what is tested here is the cache, not the encoder): ids that follow the pixels."""
    L = sum(s * s for s in tokenizer.cfg.scales)
    return (images.flip(3) if flip else images).flatten(1)[:, :L].to(torch.int16) % tokenizer.cfg.vocab_size


def test_the_token_cache_sees_a_label_or_an_image_changed_past_the_first_64(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tokens, "tokenize", fast_tokens)
    tokenizer = Tokenizer(TINY_TOKENIZER).eval()
    train_data, test_data = split(100, 0), split(80, 1)
    first = cached_tokens(tokenizer, tmp_path, train_data, test_data, torch.device("cpu"))

    relabelled = (train_data[0], train_data[1].clone())
    relabelled[1][-1] = (relabelled[1][-1] + 1) % 10  # the 100th label
    second = cached_tokens(tokenizer, tmp_path, relabelled, test_data, torch.device("cpu"))
    assert torch.equal(second[1], torch.cat([relabelled[1], relabelled[1]]))
    assert "made by another tokenizer or from other data" in capsys.readouterr().err

    repainted = (test_data[0].clone(), test_data[1])
    repainted[0][-1] = 255 - repainted[0][-1]  # the 80th test image, inverted
    expected = fast_tokens(tokenizer, repainted[0], "cpu")
    assert not torch.equal(expected[-1], first[2][-1])  # (the change shows in its tokens)
    third = cached_tokens(tokenizer, tmp_path, train_data, repainted, torch.device("cpu"))
    assert torch.equal(third[2], expected)
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 3


def test_the_token_cache_key_covers_the_tokenizer_settings_too():
    """The same weights picking codes by another rule give other token maps."""
    one = Tokenizer(TINY_TOKENIZER)
    other = Tokenizer(TokenizerConfig(**{**asdict(TINY_TOKENIZER), "cosine_lookup": not TINY_TOKENIZER.cosine_lookup}))
    other.load_state_dict(one.state_dict())
    data = split(2, 0), split(2, 1)
    assert tokens.cache_key(one, *data) != tokens.cache_key(other, *data)


def test_stale_temporaries_beside_a_cache_are_removed_when_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(tokens, "tokenize", fast_tokens)
    tokenizer = Tokenizer(TINY_TOKENIZER).eval()
    data = split(10, 0), split(5, 1)
    cached_tokens(tokenizer, tmp_path, *data, torch.device("cpu"))
    cache = next(tmp_path.glob("tokens-*.pt"))
    dead, live = (tmp_path / f"{cache.name}.{pid}.abc.tmp" for pid in (dead_pid(), os.getpid()))
    dead.write_bytes(b"half")
    live.write_bytes(b"half")  # a writer still running: never touched
    cached_tokens(tokenizer, tmp_path, *data, torch.device("cpu"))
    assert not dead.exists() and live.exists()


# --- 3. images are read in the mode they are ---

@pytest.mark.parametrize("suffix, mode", [(".png", "I;16"), (".pgm", "I")])
def test_a_16_bit_gray_image_reads_as_the_8_bit_gray_it_scales_to(suffix, mode, tmp_path):
    gray8 = (np.arange(32 * 32).reshape(32, 32) // 4).astype(np.uint8)  # 0..255, white included
    Image.fromarray(gray8).save(tmp_path / "gray8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / f"gray16{suffix}")  # 255 -> 65535
    assert Image.open(tmp_path / f"gray16{suffix}").mode == mode
    read16, _ = sample.load_source_image(str(tmp_path / f"gray16{suffix}"), tmp_path)
    read8, _ = sample.load_source_image(str(tmp_path / "gray8.png"), tmp_path)
    assert torch.equal(read16, read8)


@pytest.mark.parametrize("array, words", [(np.full((32, 32), 70_000, np.int32), "32-bit integers"),
                                          (np.full((32, 32), 0.5, np.float32), "floats")])
def test_pixels_whose_white_is_unknown_are_refused_in_one_line(array, words, tmp_path):
    Image.fromarray(array).save(tmp_path / "deep.tiff")
    with pytest.raises(ValueError, match=f"its pixels are {words}.*save it as an 8- or 16-bit image"):
        sample.load_source_image(str(tmp_path / "deep.tiff"), tmp_path)


# --- 4. each message names the right file and the right cause ---

def test_a_diverged_run_says_what_its_checkpoint_holds(tmp_path):
    path = tmp_path / "var.pt"

    def message():
        with pytest.raises(Diverged) as e:
            guard.stop("the loss was nan")
        return str(e.value)

    guard = DivergenceGuard("var", torch.nn.Linear(2, 2), torch.device("cpu"), 1e-3, path)
    assert message().endswith(f"nothing was saved: {path} was never written")
    save_checkpoint({"kind": "test"}, path)  # as if the run had saved a good step
    assert message().endswith(f"{path} was not overwritten: it keeps the last good step")
    guard = DivergenceGuard("var", torch.nn.Linear(2, 2), torch.device("cpu"), 1e-3, path)  # --force over it
    assert message().endswith(f"{path} was not overwritten: it holds what it held before this run started")


@pytest.mark.parametrize("what, words", [("folder", "is a folder, not a file"), ("loop", "is a symlink loop"),
                                         ("dangling", "is a symlink to ")])
def test_a_checkpoint_path_that_is_not_a_file_is_named_for_what_it_is(what, words, tmp_path):
    path = tmp_path / "ckpt"
    if what == "folder":
        path.mkdir()
    else:
        path.symlink_to(path if what == "loop" else tmp_path / "gone.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"checkpoint {path} {words}")
    assert (what == "dangling") == ("does not exist" in str(e.value))


def test_init_from_a_folder_is_named_a_folder(data_dir, tmp_path):
    assert "is a folder, not a file" in one_line(data_dir, tmp_path / "out", "--stage", "var", "--init-from", tmp_path)


def test_a_write_that_cannot_start_names_the_file_not_its_temporary(tmp_path, monkeypatch):
    def read_only(dir, prefix, suffix):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, f"{prefix}abc{suffix}"))

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    with pytest.raises(FileError) as e:
        atomic_write(tmp_path / "x.png", lambda f: f.write(b"png"))
    assert str(e.value) == f"cannot write {tmp_path / 'x.png'}: Read-only file system"


def test_an_out_dir_that_is_a_dangling_symlink_says_so(data_dir, tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    message = one_line(data_dir, tmp_path / "out", "--stage", "tokenizer")
    assert f"{tmp_path / 'out'} is a symlink to {tmp_path / 'nowhere'}, which does not exist" in message


def test_resume_and_force_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", "--force", "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and "give one of them" in capsys.readouterr().err


def test_more_training_images_than_the_data_holds_are_refused(data_dir, tmp_path):
    message = one_line(data_dir, tmp_path / "out", "--stage", "tokenizer", "--perceptual-weight", "0",
                       "--train-images", "100000")
    assert message == f"error: --train-images 100000: {data_dir} holds 200 training images"


# --- SIGTERM ends every command as Ctrl-C does: one line, exit status 130 ---

@pytest.fixture
def sigterm_to_self(monkeypatch):
    """A function that sends SIGTERM to this process, and waits for it to be handled. A command that
    left Python's default (die at once, status 143, no line) would end the test run: this fixture's
    own handler stands in for that default and fails the test instead."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM was not handled by the command (Python's default: exit 143, no line)")

    previous = {s: signal.signal(s, unhandled if s == signal.SIGTERM else signal.getsignal(s))
                for s in (signal.SIGINT, signal.SIGTERM)}
    yield lambda *args, **kwargs: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5))
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_sigterm_while_tokenizing_is_one_line_and_130(data_dir, tmp_path, monkeypatch, capsys, sigterm_to_self):
    tokenizer = Tokenizer(TINY_TOKENIZER)
    save_checkpoint({"kind": "tokenizer", "model": tokenizer.state_dict(), "model_config": asdict(TINY_TOKENIZER),
                     "finished": True}, tmp_path / "out" / "tokenizer.pt")
    monkeypatch.setattr(tokens, "tokenize", sigterm_to_self)
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--stage", "var", "--data-dir", str(data_dir), "--out-dir",
                    str(tmp_path / "out")])
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted; every checkpoint written so far is kept"


def test_sigterm_during_the_fid_reference_statistics_is_one_line_and_130(data_dir, tmp_path, monkeypatch, capsys,
                                                                         sigterm_to_self):
    from minivar.studies import evaluate, metrics
    monkeypatch.setattr(evaluate, "feature_network", lambda device: type("Net", (), {"dim": 8})())
    monkeypatch.setattr(metrics, "features", sigterm_to_self)
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--train", "--n", "2", "--data-dir", str(data_dir), "--cache-dir", str(tmp_path),
                       "--device", "cpu"])
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "interrupted; no FID was written"


@pytest.mark.parametrize("study, replaced, argv", [
    ("complexity", "measure", ["--grids", "4", "--batch-sizes", "1", "--device", "cpu"]),
    ("training_cost", "study", ["--grids", "4", "--batch-sizes", "1", "--device", "cpu"]),
    ("bench", "bench_step", ["step", "--preset", "tiny", "--device", "cpu"]),
])
def test_sigterm_during_a_measurement_is_one_line_and_130(study, replaced, argv, tmp_path, monkeypatch, capsys,
                                                          sigterm_to_self):
    import importlib
    module = importlib.import_module(f"minivar.studies.{study}")
    monkeypatch.setattr(module, replaced, sigterm_to_self)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []

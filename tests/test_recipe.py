"""The recipe study (studies/recipe.py): one trial at a time, each written as soon as it is scored,
the next invocation continuing where the written ones stop; `combined` takes what helped (recipe_trials.py)."""
import json
import signal
import sys

import pytest
import torch

from minivar.studies import evaluate, recipe, recipe_trials
from minivar.tokenizer import Tokenizer, TokenizerConfig
from minivar.training.checkpoint import save_checkpoint
from minivar.training.cli import sigterm_like_ctrl_c
from minivar.training.presets import PRESETS
from tests.conftest import write_fake_cifar
from tests.test_train import StandIn


def fake_result(folder, name, best_fid, ce=4.9, ce_ema=4.9):
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "best_fid": best_fid, "test_ce": ce,
                                                     "test_ce_ema": ce_ema}))


def test_combined_takes_each_change_that_helped_by_fid_or_by_test_loss_within_the_fid_noise(tmp_path):
    results = {"base": (60.0, 4.90), "lr2x": (60.5, 4.85),  # FID within the noise, test loss clearly lower
               "lr3x": (57.0, 4.87),  # FID clearly better; lr2x's loss is lower still, so it sets the rate
               "lr5x": (62.0, 4.84),  # FID worse by more than the noise: no, though its loss beats lr2x's
               "batch2x": (59.5, 4.89),  # both within the noise: no
               "batch-half": (61.5, 4.80),  # loss lower but FID worse by more than the noise: no
               "shallower": (58.5, 4.95),  # FID better by more than the noise: yes, whatever the loss
               "ema0.99": (70.0, 4.90)}
    for name, (fid, ce) in results.items():
        fake_result(tmp_path, name, fid, ce_ema=ce)
    train, model = recipe_trials.trial_changes("combined", "cpu", tmp_path)
    lr = PRESETS["cpu"]["var"][0]["lr"]
    assert train == {"lr": 2 * lr} and model == {"depth": PRESETS["cpu"]["var"][1]["depth"] - 2}
    # the loss compared is the moving average's (samples come from it), the raw weights' where there is none
    fake_result(tmp_path, "batch2x", 59.5, ce=4.89, ce_ema=4.70)
    fake_result(tmp_path, "ema0.99", 60.0, ce=4.80, ce_ema=None)
    train, _ = recipe_trials.trial_changes("combined", "cpu", tmp_path)
    assert train == {"lr": 2 * lr, "batch_size": 2 * PRESETS["cpu"]["var"][0]["batch_size"], "ema_decay": 0.99}
    (tmp_path / "ema0.99.json").unlink()
    with pytest.raises(ValueError, match="ema0.99 not yet"):
        recipe_trials.trial_changes("combined", "cpu", tmp_path)


CHILD = """
import os, signal, sys, time
def save(signum, frame):
    open(sys.argv[1], "w").write("saved")
    sys.exit(130)
signal.signal(signal.SIGINT, save)
time.sleep(0.5)
os.kill(os.getppid(), signal.SIGTERM)  # the study is stopped while this "training" runs
time.sleep(30)
"""


def test_stopping_the_study_lets_the_running_training_save_first(tmp_path):
    """SIGTERM to the study: train.py gets one SIGINT from it, saves, and the study stops after it."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    sigterm_like_ctrl_c()
    try:
        with pytest.raises(KeyboardInterrupt):
            recipe.train_to_the_end([sys.executable, "-c", CHILD, str(tmp_path / "saved")])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert (tmp_path / "saved").read_text() == "saved"


@pytest.mark.slow
def test_a_trial_trains_scores_and_writes_its_json_and_the_next_run_continues(tmp_path, monkeypatch, capsys):
    write_fake_cifar(tmp_path / "data" / "cifar-10-batches-py")
    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(widths=(16, 32, 32), vocab_size=64, latent_dim=8))
    save_checkpoint({"kind": "tokenizer", "model_config": vars(tok.cfg), "model": tok.state_dict()},
                    tmp_path / "tokenizer.pt")
    monkeypatch.setattr(evaluate, "feature_network", StandIn)
    common = ["--preset", "tiny", "--tokenizer", str(tmp_path / "tokenizer.pt"), "--data-dir", str(tmp_path / "data"),
              "--work-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), "--n", "20",
              "--cfg-scale", "0,2", "--top-k", "0", "--device", "cpu"]
    recipe.main(common)  # the next trial not done: the baseline
    base = json.loads((tmp_path / "results" / "base.json").read_text())
    assert base["steps"] == PRESETS["tiny"]["var"][0]["max_steps"] and base["changes"] == {}
    assert [r["cfg_scale"] for r in base["fid"]] == [0, 2] and base["best_fid"] == min(r["fid"] for r in base["fid"])
    assert base["test_ce"] > 0 and base["test_ce_ema"] > 0 and base["machine"]["cpu"]
    assert base["train_command"].startswith("python train.py --stage var --preset tiny")
    recipe.main(common)  # continues with the next one, at twice the learning rate, the same steps
    lr2x = json.loads((tmp_path / "results" / "lr2x.json").read_text())
    assert lr2x["changes"] == {"lr": 2 * PRESETS["tiny"]["var"][0]["lr"]} and lr2x["steps"] == base["steps"]
    capsys.readouterr()
    recipe.main(common + ["--list"])
    table = capsys.readouterr().out
    assert "| base | none |" in table and "| lr3x | not run yet |" in table

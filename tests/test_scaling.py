"""The scaling study: the power-law fit, the Pareto frontier, and a tiny study end to end."""
import json
import math
import random

import pytest
import torch

from minivar.data import load_cifar10
from minivar.studies.scaling import fit_power_law, pareto_frontier, run_study, save_plot
from tests.conftest import run_script, write_fake_cifar
from tests.test_train import OFFLINE, one_line_error


def test_fit_recovers_a_known_power_law():
    a, alpha = 2.5e-3, 0.2
    params = [3e4 * 2.2 ** i for i in range(6)]  # 30k .. 1.5M, like the study's sizes
    fit = fit_power_law(params, [(a * n) ** -alpha for n in params])
    assert fit["a"] == pytest.approx(a, rel=1e-6)
    assert fit["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert fit["A"] == pytest.approx(a ** -alpha, rel=1e-9)  # the same law as A·N^(−α)


def test_fit_with_noise_stays_close_and_r2_tells_a_power_law_from_none():
    rng = random.Random(0)
    a, alpha = 1e-4, 0.05  # a shallow law, as small models on little data give
    params = [4e4 * 2.5 ** i for i in range(6)]
    noisy = [(a * n) ** -alpha * math.exp(rng.gauss(0, 0.002)) for n in params]
    fit = fit_power_law(params, noisy)
    assert fit["alpha"] == pytest.approx(alpha, abs=0.005) and fit["r2"] > 0.95
    shuffled = [noisy[i] for i in (3, 0, 5, 1, 4, 2)]  # the same losses, no relation to size
    assert fit_power_law(params, shuffled)["r2"] < 0.5


def test_pareto_frontier_keeps_the_points_no_cheaper_point_beats():
    points = [(1.0, 5.0), (2.0, 4.0), (3.0, 4.5), (4.0, 3.0), (0.5, 6.0), (5.0, 3.0)]
    assert pareto_frontier(points) == [(0.5, 6.0), (1.0, 5.0), (2.0, 4.0), (4.0, 3.0)]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A tokenizer from train.py's tiny preset, on a tiny synthetic CIFAR-10."""
    root = tmp_path_factory.mktemp("scaling")
    write_fake_cifar(root / "data" / "cifar-10-batches-py")
    result = run_script("train.py", "--preset", "tiny", "--stage", "tokenizer", "--data-dir", root / "data",
                        "--out-dir", root / "tok", env=OFFLINE)
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def tiny_settings(root, depths):
    return {"depths": depths, "width_per_depth": 16, "tokens": 24 * 8 * 155, "batch_size": 8, "lr": 3e-3,
            "weight_decay": 0.05, "warmup_fraction": 0.1, "eval_images": 60, "curve_images": 20, "seed": 0,
            "tokenizer": str(root / "tok" / "tokenizer.pt")}


@pytest.mark.slow
def test_a_tiny_study_end_to_end_continues_after_a_stop(tiny_tokenizer, tmp_path):
    root, out, cpu = tiny_tokenizer, tmp_path / "study.json", torch.device("cpu")
    data = load_cifar10(root / "data", "train"), load_cifar10(root / "data", "test")
    first = run_study(tiny_settings(root, [1, 2]), data, cpu, out, progress=lambda message: None)
    rows = first["rows"]
    assert [r["depth"] for r in rows] == [1, 2] and rows[0]["params"] < rows[1]["params"]
    assert rows[0]["tokens"] == rows[1]["tokens"] == 24 * 8 * 155  # equal tokens for every size
    assert rows[0]["flops"] < rows[1]["flops"]
    for r in rows:
        assert r["steps"] == 24 and [p["step"] for p in r["curve"]] == [2, 3, 6, 12, 24]
        assert all(0 < loss < 2 * math.log(64) for loss in (r["loss"], r["loss_last"], *r["loss_per_scale"]))
        assert r["loss_last"] == r["loss_per_scale"][-1]
    assert {"loss_vs_params", "loss_last_vs_params", "loss_vs_compute"} <= set(first["fits"])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))  # each size saved as it finished

    # the same command with one more size trains only that size; finished ones are kept as they were
    messages = []
    second = run_study(tiny_settings(root, [1, 2, 3]), data, cpu, out, progress=messages.append)
    assert messages[0] == f"depth 1: already in {out}, kept" and messages[1].startswith("depth 2: already")
    assert second["rows"][:2] == rows and second["rows"][2]["depth"] == 3
    assert save_plot(second, tmp_path / "study.png") and (tmp_path / "study.png").stat().st_size > 10_000

    # asking for fewer sizes trains nothing and drops nothing
    third = run_study(tiny_settings(root, [2]), data, cpu, out, progress=messages.append)
    assert messages[-1] == f"depth 2: already in {out}, kept"
    assert third["rows"] == second["rows"] and third["fits"] == second["fits"]
    assert [r["depth"] for r in json.loads(out.read_text())["rows"]] == [1, 2, 3]

    with pytest.raises(ValueError, match="other settings; pass --fresh"):
        run_study({**tiny_settings(root, [1, 2]), "lr": 1e-2}, data, cpu, out)


@pytest.mark.parametrize("args, message", [
    (["--depths", "3"], "two or more positive depths"),
    (["--tokenizer", "nowhere/tokenizer.pt"], "does not exist"),
])
@pytest.mark.slow
def test_bad_input_is_one_line(tiny_tokenizer, tmp_path, args, message):
    tokenizer = ["--tokenizer", tiny_tokenizer / "tok" / "tokenizer.pt"]
    result = run_script("-m", "minivar.studies.scaling", "--data-dir", tiny_tokenizer / "data", "--out", tmp_path / "s.json",
                        *tokenizer, *args, env=OFFLINE)
    assert message in one_line_error(result)

"""The moving average of a generator's weights (training/ema.py): its recursion and warm-up,
worked out by hand; where it is kept (checkpoints, exports) and which weights sampling uses."""
import pytest
import torch

from minivar.training.checkpoint import (
    CheckpointError,
    export_for_sampling,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)
from minivar.training.ema import EMA, warmed_up_decay
from tests.test_var import tiny_var_stage


def test_the_decay_warms_up_as_one_plus_t_over_ten_plus_t_then_stays_at_its_cap():
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1)  # the first average is 90% the new weights
    assert warmed_up_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmed_up_decay(0.999, 1700) == pytest.approx(1701 / 1710)  # the cpu preset's last step: ~0.9947
    assert warmed_up_decay(0.99, 1700) == 0.99 and warmed_up_decay(0.999, 10**6) == 0.999


def test_each_update_moves_the_average_by_one_minus_d_towards_the_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5)
    expected = {k: v.clone() for k, v in model.state_dict().items()}  # starts as a copy
    for step in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape))
        ema.update(model, step)
        d = min(0.5, (1 + step) / (10 + step))  # 0.1, 0.18..., 0.25, 0.3077
        expected = {k: d * expected[k] + (1 - d) * v for k, v in model.state_dict().items()}
        assert all(torch.allclose(ema.state_dict()[k], expected[k], atol=1e-6) for k in expected), step
    assert not ema.model.weight.requires_grad  # the average is never trained


def test_the_average_is_a_separate_copy_holding_the_model_s_buffers():
    """Buffers are not learned (VAR's mask and scale index): the average holds the model's own, copied
    once, and sampling from it sees the same mask. Its weights are its own tensors, not the model's."""
    from minivar.var import VAR, VARConfig
    torch.manual_seed(0)
    model = VAR(VARConfig(scales=(1, 2, 3), vocab_size=16, latent_dim=4, dim=8, depth=1, heads=2))
    ema = EMA(model, decay=0.9)
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update(model, step)
    buffers = dict(model.named_buffers())
    assert buffers.keys() == dict(ema.model.named_buffers()).keys() == {"mask_LL", "level_L"}
    assert all(torch.equal(b, buffers[n]) for n, b in ema.model.named_buffers())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ema.model.parameters(), model.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(ema.model.parameters(), model.parameters()))  # it lags


def test_a_bad_decay_is_refused():
    with pytest.raises(ValueError, match="decay"):
        EMA(torch.nn.Linear(1, 1), 1.0)


def test_the_stage_averages_after_every_step_and_its_checkpoint_carries_both_weights(tmp_path):
    stage = tiny_var_stage(tmp_path, ema_decay=0.9)
    optimizer = torch.optim.AdamW(stage.model.parameters(), lr=1e-2)
    average = {k: v.clone() for k, v in stage.model.state_dict().items()}
    for step in range(3):
        stage.train_step(step, optimizer, 1e-2, 1.0)
        d = min(0.9, (1 + step) / (10 + step))
        average = {k: d * average[k] + (1 - d) * v if v.is_floating_point() else v
                   for k, v in stage.model.state_dict().items()}
    state = stage.state()
    assert all(torch.allclose(state["ema"][k].float(), average[k].float(), atol=1e-6) for k in average)
    assert not torch.equal(state["ema"]["head.out.weight"], stage.model.state_dict()["head.out.weight"])

    resumed = tiny_var_stage(tmp_path / "resumed", ema_decay=0.9)
    resumed.load_state(state)  # --resume: the average as saved
    assert all(torch.equal(resumed.ema.state_dict()[k], state["ema"][k]) for k in state["ema"])
    resumed.model.load_state_dict(stage.model.state_dict())
    resumed.load_state({})  # resuming a run that had no average: it starts from the weights resumed
    assert all(torch.equal(resumed.ema.state_dict()[k], stage.model.state_dict()[k]) for k in average)


def generator_file(tmp_path, stage):
    path = tmp_path / "var.pt"
    save_checkpoint({"kind": "var", "model": stage.model.state_dict(), "model_config": vars(stage.model.cfg),
                     **stage.state()}, path)
    return path


def test_sampling_uses_the_average_unless_told_otherwise_and_exports_keep_one_set(tmp_path):
    stage = tiny_var_stage(tmp_path, ema_decay=0.5)
    optimizer = torch.optim.AdamW(stage.model.parameters(), lr=1e-2)
    for step in range(3):
        stage.train_step(step, optimizer, 1e-2, 1.0)
    path = generator_file(tmp_path, stage)
    key, ema, raw = "head.out.weight", stage.ema.state_dict()["head.out.weight"], stage.model.state_dict()["head.out.weight"]
    assert torch.equal(load_generator(path, "cpu")[0].state_dict()[key], ema)
    assert torch.equal(load_generator(path, "cpu", weights="raw")[0].state_dict()[key], raw)

    export_for_sampling(path, tmp_path / "small.pt")
    small = load_checkpoint(tmp_path / "small.pt")
    assert small["weights"] == "ema" and "ema" not in small and torch.equal(small["model"][key], ema.half())
    assert torch.equal(load_generator(tmp_path / "small.pt", "cpu")[0].state_dict()[key], ema.half().float())
    with pytest.raises(CheckpointError, match="only its EMA weights"):
        load_generator(tmp_path / "small.pt", "cpu", weights="raw")
    export_for_sampling(path, tmp_path / "small_raw.pt", weights="raw")
    assert load_checkpoint(tmp_path / "small_raw.pt")["weights"] == "raw"
    assert torch.equal(load_checkpoint(tmp_path / "small_raw.pt")["model"][key], raw.half())

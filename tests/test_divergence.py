"""The divergence guard (training/divergence.py), without training a model: a normal step passes;
weights thrown past 10⁴ × (their largest size at the start + 1), either sign, or not finite,
stop the run even while the loss looks fine; a loss that is not finite or exceeds 10⁴ × (its first
value + 1) stops it, naming the first step that went wrong."""
import pytest
import torch

from minivar.training.divergence import Diverged, DivergenceGuard


def guarded_model(ckpt_path="no-such-folder/var.pt"):
    """A linear layer whose largest weight is 1: the weight limit is 10⁴ × (1 + 1) = 20,000."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -0.5], [0.25, 0.0]]))
        model.bias.zero_()
    return model, DivergenceGuard("var", model, torch.device("cpu"), 1e-2, str(ckpt_path))


def test_a_normal_step_and_weights_just_inside_the_limit_pass():
    model, guard = guarded_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss = model(torch.ones(4, 2)).pow(2).mean()
    loss.backward()
    guard.watch(0, loss)
    optimizer.step()
    guard.check(0)  # nothing raised
    with torch.no_grad():
        model.weight[0, 1] = -19_000.0  # large, but inside the limit
    guard.check(1)


@pytest.mark.parametrize("thrown", [-21_000.0, 21_000.0, float("nan"), float("inf")])
def test_weights_thrown_far_stop_the_run_while_the_loss_still_looks_fine(thrown, tmp_path):
    """The checkpoint already on disk when the run started is what the message says is kept."""
    ckpt = tmp_path / "var.pt"
    ckpt.write_bytes(b"the previous run's checkpoint")
    model, guard = guarded_model(ckpt)
    guard.watch(0, torch.tensor(1.5))  # the step's loss, computed before its update: fine
    with torch.no_grad():
        model.weight[0, 1] = thrown  # what that update did
    with pytest.raises(Diverged, match=r"after step 1 the var weights reached .*was not overwritten: it holds "
                                       r"what it held before this run started"):
        guard.check(1)
    assert ckpt.read_bytes() == b"the previous run's checkpoint"


def test_a_run_that_never_saved_says_so(tmp_path):
    model, guard = guarded_model(tmp_path / "var.pt")
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match=r"nothing was saved: .*var.pt was never written"):
        guard.check(1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 30_001.0])
def test_a_loss_that_is_not_finite_or_too_large_stops_the_run_at_its_first_bad_step(bad):
    """The first loss is 2: the limit is 10⁴ × (2 + 1) = 30,000. Steps 0-1 fine, 2 bad, 3 bad too."""
    _, guard = guarded_model()
    for step, loss in enumerate([2.0, 29_999.0, bad, 50_000.0, 1.0]):
        guard.watch(step, torch.tensor(loss))
        if step == 1:
            guard.check(step)  # nothing raised yet
    with pytest.raises(Diverged, match="var loss was not a finite number, or 10⁴ times its start, at step 3:"):
        guard.check(4)

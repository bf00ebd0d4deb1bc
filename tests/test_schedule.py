"""The learning-rate schedule every run trains with (training/optim.py lr_at): a linear warm-up
to the peak, then half a cosine down to 10% of it at max_steps, and 10% after. Worked by hand."""
import math

import pytest

from minivar.training.optim import lr_at


def test_warm_up_climbs_in_equal_steps_and_reaches_the_peak_at_its_last_step():
    """Peak 0.4 over 4 warm-up steps: 0.1, 0.2, 0.3, 0.4; the first step after it is the cosine's start, the peak."""
    assert [lr_at(step, 0.4, 4, 14) for step in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4])


def test_after_warm_up_the_cosine_falls_to_ten_percent_of_the_peak_and_stays():
    """Peak 2, 4 warm-up steps, 14 in all: the cosine spans steps 4..14, progress p = (step − 4) / 10,
    lr = 2·(0.1 + 0.9·(1 + cos πp)/2)."""
    by_hand = {4: 2.0, 6: 2 * (0.1 + 0.45 * (1 + math.cos(0.2 * math.pi))), 9: 2 * (0.1 + 0.45), 14: 0.2}
    assert {step: lr_at(step, 2.0, 4, 14) for step in by_hand} == pytest.approx(by_hand)
    assert lr_at(6, 2.0, 4, 14) == pytest.approx(1.828115, abs=1e-6)
    assert [lr_at(step, 2.0, 4, 14) for step in (15, 20, 1000)] == pytest.approx([0.2] * 3)  # past max_steps


def test_without_warm_up_the_first_step_has_the_peak():
    assert [lr_at(step, 1.0, 0, 10) for step in (0, 5, 10)] == pytest.approx([1.0, 0.55, 0.1])

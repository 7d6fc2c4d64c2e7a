"""Communication and pipeline formulas, checked by hand."""

import pytest

from simulator.parallel import (Layout, allreduce_factor, allreduce_time_s, pipeline_bubble_frac, pipeline_time_s,
                                send_time_s)


def test_allreduce_by_hand():
    # 8 ranks, 64 MiB, busbw 300 GB/s, 5 us per hop: 2*7*5us + 2*7/8 * 64MiB / 300e9.
    S = 64 * 2**20
    assert allreduce_factor(8) == pytest.approx(1.75)
    assert allreduce_time_s(S, 8, 300e9, 5e-6) == pytest.approx(14 * 5e-6 + 1.75 * S / 300e9)
    assert allreduce_time_s(S, 1, 300e9, 5e-6) == 0.0
    assert allreduce_factor(2) == 1.0


def test_send_and_pipeline_by_hand():
    assert send_time_s(1e9, 50e9, 1e-5) == pytest.approx(0.02001)
    assert pipeline_bubble_frac(4, 1) == pytest.approx(3 / 4)
    assert pipeline_bubble_frac(4, 12) == pytest.approx(3 / 15)
    assert pipeline_time_s(1.2, 4, 12) == pytest.approx(1.2 * 15 / 12)
    # The bubble shrinks with more micro-batches, and vanishes with one stage.
    fr = [pipeline_bubble_frac(8, m) for m in (1, 2, 4, 8, 16, 64)]
    assert all(a > b for a, b in zip(fr, fr[1:]))
    assert pipeline_bubble_frac(1, 5) == 0.0


def test_layout():
    lay = Layout(tp=2, pp=3, dp=2)
    assert lay.gpus == 12 and lay.layers_per_stage(80) == 27

"""Progress in a log: plain lines at every `every` fraction and one at the end, never a carriage
return; none at all for loops that print their own line (training epochs)."""

from __future__ import annotations

import pytest

from lenet_edge.runtime.progress import Progress

pytestmark = pytest.mark.unit


def test_a_log_gets_a_line_per_quarter_and_no_redraws(capsys):
    with Progress(100, "work", "img") as bar:
        for _ in range(100):
            bar.update(1)
        bar.set_postfix_str("last item")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err
    assert [ln.split(" (")[0] for ln in lines] == [
        "work: 25/100 img",
        "work: 50/100 img",
        "work: 75/100 img",
        "work: 100/100 img",
    ]
    assert lines[-1].endswith("last item")


def test_every_none_prints_nothing_but_what_the_caller_writes(capsys):
    bar = Progress(938, "lenet_pool epoch 1/10", "step", every=None)
    for _ in range(938):
        bar.update(1)
    bar.write("lenet_pool epoch 1: loss 0.2")
    bar.close()
    out = capsys.readouterr()
    assert out.err == "" and out.out == "lenet_pool epoch 1: loss 0.2\n"


def test_disabled_and_resumed_bars(capsys):
    bar = Progress(10, "off", enabled=False)
    bar.update(10)
    bar.close()
    assert capsys.readouterr().err == ""
    with Progress(4, "study", "job", initial=2, every=1 / 4) as bar:  # 2 cached: a line per new job
        bar.update(1)
        bar.update(1)
    assert [ln.split(" (")[0] for ln in capsys.readouterr().err.splitlines()] == [
        "study: 3/4 job",
        "study: 4/4 job",
    ]

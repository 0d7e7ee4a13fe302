"""targets.py: the teacher's kept answers; a validation split never puts one input on both sides."""

from __future__ import annotations

import torch

from internalize.targets import Targets
from internalize.views import View


def _targets(inputs: int, samples: int) -> Targets:
    out = Targets(ids=[])
    for i in range(inputs):
        for s in range(samples):
            view = View((1, 2, i), (3, s))
            out.keep({"input": f"q{i}"}, i, f"g{i}.{s}", f"a{i}.{s}", view, (1, i), torch.full((2, 3), float(i)),
                      torch.zeros(2, 2, dtype=torch.long))
    return out


def test_split_holds_out_whole_inputs_at_the_share_asked_and_keeps_everything_once():
    targets = _targets(10, 3)
    rest, held = targets.split(0.2, seed=0)
    assert len(set(held.source)) == 2 and len(held) == 6 and len(rest) == 24
    assert not set(held.source) & set(rest.source)
    assert sorted(rest.answers + held.answers) == sorted(targets.answers)
    for part in (rest, held):  # every field moved together
        for i, source in enumerate(part.source):
            assert part.records[i]["input"] == f"q{source}" and part.answers[i].startswith(f"a{source}.")
            assert part.student_views[i].prompt_ids == (1, source) and float(part.logp[i][0, 0]) == source
    assert targets.split(0.2, seed=0)[1].source == held.source  # seeded


def test_a_small_share_still_holds_out_one_input():
    rest, held = _targets(3, 1).split(0.01, seed=0)
    assert len(held) == 1 and len(rest) == 2

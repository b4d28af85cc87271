"""The ceiling ``d_r L``, pinned end to end on a trained backbone's features.

The tiny ``L = 2`` NequIP backbone of the fixtures (trained by ``nequip-train``), heads of
degree ``d_r`` = 1, 2 and 3 solved in closed form in-process, ``target: injected`` (the heads
fit the injected signal alone, so the tiny backbone's own error does not decide anything) and
the energy spectrum alone (one backbone pass a frame). The frames: the bundled aspirin file
past the fixtures' first 40, each frame twice with two marked directions (probe seeds 0 and
1: the energy spectrum has one row a frame and a degree-3 head about 3,000 features, so two
directions a frame make the numbers clear), split by frame into training, validation and
test, the report's own per-frame sums and bootstrap.
"""

import ase.io
import pytest
from helpers import aspirin_frames, build, closed_form_report

from nequip_spectral.data import BUNDLED_ASPIRIN

L = 2
L_VALUES = [2, 3, 4, 5, 6, 7]  # every degree's ceiling d_r L and the l above it
PROBE = {"l_values": L_VALUES, "target": "injected", "force_spectrum": False}
SPLIT = {"train": (40, 1040), "validation": (1040, 1270), "test": (1270, 1500)}  # frames
SEEDS = (0, 1)  # a marked direction each


@pytest.fixture(scope="module")
def splits():
    """Every split's frames, each frame with each seed's marked direction, frame by frame."""
    atoms = ase.io.read(BUNDLED_ASPIRIN, index=":")
    result = {}
    for name, (start, stop) in SPLIT.items():
        per_seed = [aspirin_frames(atoms[start:stop], {**PROBE, "seed": s}) for s in SEEDS]
        result[name] = [frame for same in zip(*per_seed, strict=True) for frame in same]
    return result


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_the_recovered_l_stop_exactly_at_the_ceiling(degree, tiny_backbone, splits):
    """A clear injected signal is recovered at ``l = d_r L`` (rho > 0.1, its interval above
    0) and nothing at any ``l`` above it (|rho| < 0.03): the ceiling moves with ``d_r``.

    Mutation tried: a degree-3 head capped at degree 4 (``_plan`` in ``nn/polynomial.py``
    without the third-degree terms, ``degree >= 3`` -> ``degree >= 4``): ``d_r = 3`` fails,
    rho(6) is 0.
    """
    probe = {**PROBE, "backbones": [tiny_backbone["ckpt"]], "degree": degree}
    model = build(probe).model
    report = closed_form_report(model, splits["train"], splits["validation"], splits["test"])
    ceiling = degree * L
    assert report["boundary"] == ceiling and report["primary"] == "energy"
    rows = report["per_l"]
    last = rows[str(ceiling)]
    assert last["rho"] > 0.1 and last["rho_ci95"][0] > 0, (degree, ceiling, last)
    for l in (l for l in L_VALUES if l > ceiling):  # ceiling + 1 first
        assert abs(rows[str(l)]["rho"]) < 0.03, (degree, l, rows[str(l)])
    assert report["cliff"]["rho_boundary"] == last["rho"]
    assert report["rho_diff"]["ci95"][0] > 0  # rho(d_r L) - rho(d_r L + 1), bootstrapped

"""``feature_tap: layers``: every layer's spectrum from one backbone pass.

An untrained three-layer NequIP backbone built in-process (two interaction layers read
``l > 0`` features), float64, the first 30 bundled aspirin frames, both spectra.
"""

import ase.io
import numpy as np
import pytest
import torch
from helpers import TYPE_NAMES, aspirin_frames, closed_form_report, report_schema_errors

from nequip_spectral.config import SpectralProbeError
from nequip_spectral.data import BUNDLED_ASPIRIN
from nequip_spectral.model import freeze_and_tap
from nequip_spectral.nn import SpectralProbeModel
from nequip_spectral.report import format_table

PROBE = {"backbones": ["in-process"], "l_values": [1, 4, 5], "target": "injected",
         "force_directions": 6}  # fmt: skip
TAPS = ("layer1_convnet", "layer2_convnet")


@pytest.fixture(scope="module")
def backbone():
    from nequip.model import NequIPGNNModel

    return NequIPGNNModel(
        seed=0, model_dtype="float64", type_names=TYPE_NAMES, r_max=5.0, l_max=2, num_layers=3,
        num_features=4, radial_mlp_depth=1, radial_mlp_width=8, avg_num_neighbors=18.0,
        per_type_energy_shifts={s: -50.0 for s in TYPE_NAMES},
        per_type_energy_scales={s: 1.0 for s in TYPE_NAMES},
    )  # fmt: skip


@pytest.fixture(scope="module")
def frames():
    return aspirin_frames(ase.io.read(BUNDLED_ASPIRIN, index=":30"), PROBE)


def probe_on(backbone, feature_tap):
    return SpectralProbeModel([freeze_and_tap(backbone, feature_tap)],
                              {**PROBE, "feature_tap": feature_tap}, TYPE_NAMES)  # fmt: skip


def report_of(model, frames):
    return closed_form_report(model, frames[:16], frames[16:22], frames[22:], n_bootstrap=50)


@pytest.fixture(scope="module")
def layers_report(backbone, frames):
    model = probe_on(backbone, "layers")
    return model, report_of(model, frames)


def test_layers_taps_the_inputs_of_the_interaction_layers_with_l_above_0(backbone):
    tapped = freeze_and_tap(backbone, "layers")
    assert tapped.taps == TAPS and [irreps.lmax for irreps in tapped.tap_irreps] == [2, 2]
    assert freeze_and_tap(backbone, "auto").taps == TAPS[-1:]  # auto: the last of them
    assert freeze_and_tap(backbone, list(reversed(TAPS))).taps == TAPS  # in network order


def test_every_tap_from_one_pass_reads_what_a_run_on_that_tap_alone_reads(
    layers_report, backbone, frames
):
    """Each tap's report (closed form solved on the same frames, both spectra) equals the
    report of a run on that tap alone: every number of ``per_l``, and the solved heads.

    Mutation tried: the taps' derivatives split in the wrong order (``derivatives[t]`` ->
    ``derivatives[-1 - t]`` in ``least_squares_rows``): fails (the taps' widths differ)."""
    model, report = layers_report
    assert [layer["tap"] for layer in report["layers"]] == list(TAPS)
    for t, tap in enumerate(TAPS):
        single = probe_on(backbone, tap)
        alone = report_of(single, frames)
        mine = report["layers"][t]["report"]
        assert mine["solver"]["features"] == alone["solver"]["features"]
        for l, row in alone["per_l"].items():
            for key, value in row.items():
                np.testing.assert_allclose(np.asarray(mine["per_l"][l][key], dtype=float),
                                           np.asarray(value, dtype=float), rtol=0, atol=1e-10,
                                           err_msg=f"{tap} l={l} {key}")  # fmt: skip
        for fit, heads in single.heads.items():
            torch.testing.assert_close(model.heads[fit][t].weights, heads[0].weights,
                                       rtol=0, atol=1e-10)  # fmt: skip
    last = {key: value for key, value in report.items() if key != "layers"}
    assert last == report["layers"][-1]["report"]  # the top level: the last tap's


def test_the_layers_report_passes_the_schema_and_the_table_shows_every_tap(layers_report):
    _, report = layers_report
    assert report_schema_errors(report) == []
    broken = {**report, "layers": [{**layer, "tap": 1} for layer in report["layers"]]}
    assert report_schema_errors(broken)
    table = format_table(report)
    assert all(tap in table for tap in TAPS), table


def test_the_backbone_runs_once_a_batch_for_all_taps(backbone, frames):
    """One forward pass (and one set of Jacobian-vector products) for every tap: each
    interaction layer before the last tap runs once per batch of the closed form's pass (the
    last tap is the input of ``layer2_convnet``; ``target: injected`` needs no backbone
    energy, so nothing after it runs).

    Mutation tried: ``FrozenBackbone.tap`` run once per tap -> counts of 2."""
    from nequip.data import AtomicDataDict

    model = probe_on(backbone, "layers")
    calls = {}
    modules = dict(backbone.model.func.named_children())
    handles = [modules[name].register_forward_hook(
        lambda module, args, out, name=name: calls.update({name: calls.get(name, 0) + 1}))
        for name in ("layer0_convnet", *TAPS)]  # fmt: skip
    try:
        model.least_squares_rows(AtomicDataDict.batched_from_list(frames[:4]))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"layer0_convnet": 1, "layer1_convnet": 1}


@pytest.mark.parametrize(
    "feature_tap, message",
    [
        (["layer1_convnet", "layer1_convnet"], "spectral_probe.feature_tap: a list must name"),
        (["layers", "layer1_convnet"], "spectral_probe.feature_tap: a list must name"),
        ([], "spectral_probe.feature_tap: must be"),
    ],
)
def test_a_bad_list_of_taps_names_the_key(feature_tap, message):
    from nequip_spectral.config import SpectralProbeConfig

    with pytest.raises(SpectralProbeError, match=message):
        SpectralProbeConfig.from_block({**PROBE, "feature_tap": feature_tap})


@pytest.mark.parametrize(
    "feature_tap, message",
    [
        (["layer1_convnet", "nothing"], "no module 'nothing'"),
        (["layer0_convnet", "layer2_convnet"], "the input of 'layer0_convnet'"),
    ],
)
def test_a_tap_the_backbone_lacks_is_refused(backbone, feature_tap, message):
    with pytest.raises(SpectralProbeError, match=message):
        freeze_and_tap(backbone, feature_tap)


def test_compare_and_the_loggers_read_every_tap(layers_report, tmp_path, capsys):
    """``nequip-spectral-compare`` puts each tap of a layers run beside the others as a run of
    its own (``RUN:TAP``); the loggers get each tap's readings under ``spectral/TAP/``."""
    import csv

    from nequip_spectral.report import write_report
    from nequip_spectral.report.loggers import report_metrics
    from nequip_spectral.scripts import compare

    _, report = layers_report
    write_report(report, tmp_path / "run")
    compare.main([str(tmp_path / "run"), "--labels", "run", "--output", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert all(f"run:{tap}" in printed for tap in TAPS), printed
    with open(tmp_path / "out" / "spectral_compare.csv") as f:
        rows = {row["l"]: row for row in csv.DictReader(f)}
    metrics = report_metrics(report)
    for layer in report["layers"]:
        for l, row in layer["report"]["per_l"].items():
            value = row["rho_recovered_forces"]
            assert float(rows[l][f"run:{layer['tap']}:rho_recovered_forces"]) == value
            assert metrics[f"spectral/{layer['tap']}/rho_recovered_forces/l{l}"] == value


def test_the_loss_trains_every_taps_heads_by_the_names_the_model_gives_them(backbone, frames):
    """``sgd`` on a list of taps: the loss's entries are the model's outputs, one set per tap
    (``b0_t1_f_l4_forces_mse``), and its gradient reaches the heads of every tap."""
    from nequip.data import AtomicDataDict

    from nequip_spectral.train import SpectralProbeLoss

    probe = {**PROBE, "solver": "sgd", "feature_tap": list(TAPS)}
    model = SpectralProbeModel([freeze_and_tap(backbone, list(TAPS))], probe, TYPE_NAMES)
    loss = SpectralProbeLoss(probe, type_names=TYPE_NAMES)
    batch = AtomicDataDict.batched_from_list(frames[:2])
    out = model(batch)
    fields = {entry.field.field for entry in loss.entries.values()}
    assert fields <= set(out)
    assert {name for name in loss.entries if "_t0_" in name} and {
        name for name in loss.entries if "_t1_" in name}  # fmt: skip
    loss(out, batch)["weighted_sum"].backward()
    for fit, per_slot in model.heads.items():
        for t, heads in enumerate(per_slot):
            assert all(p.grad is not None and p.grad.abs().sum() > 0
                       for p in heads.parameters()), (fit, t)  # fmt: skip


def test_the_energy_spectrum_recomputes_the_taps_a_full_cache_did_not_keep(backbone, frames):
    """Without the force spectrum each tap's features are cached per frame; a cache that
    fills up keeps some taps and not others, and the next pass must compute the missing ones
    (the same outputs), not read a tap as absent.

    Mutation tried: the cache read as complete when the first tap is there
    (``any(... is None ...)`` -> ``features[0] is None``): fails (a head reads ``None``)."""
    from nequip.data import AtomicDataDict

    from nequip_spectral.nn.cache import FrameCache

    model = SpectralProbeModel([freeze_and_tap(backbone, "layers")],
                               {**PROBE, "feature_tap": "layers", "force_spectrum": False},
                               TYPE_NAMES)  # fmt: skip
    batch = AtomicDataDict.batched_from_list(frames[:2])
    first_tap = model.backbones[0].tap(dict(batch))[1][0]
    model._cache = FrameCache(max_bytes=first_tap.numel() * first_tap.element_size())
    before = model(batch)
    assert model.cache_bytes == model._cache.max_bytes  # the first tap kept, the second not
    after = model(batch)
    keys = [key for key in before if key.startswith("spn_energy_")]
    assert any("_t1_" in key for key in keys)
    for key in keys:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)

import numpy as np
import pytest
import torch
from helpers import as_frames, file_rendezvous, report_schema_errors

from nequip_spectral.theory.metrics import bootstrap_spectrum, frame_sums, spectrum

NUM_FRAMES, PER_FRAME = 40, 12


def synthetic(prediction_of, seed=0):
    """Per-frame sums for an injected signal e, a target t = b + e and a given prediction."""
    generator = torch.Generator().manual_seed(seed)
    shape = (NUM_FRAMES * PER_FRAME, 3)
    injected = torch.randn(shape, dtype=torch.float64, generator=generator)
    backbone_error = 0.5 * torch.randn(shape, dtype=torch.float64, generator=generator)
    # orthogonal to the injection over the test set, so that G_l - G_0 has no cross term
    backbone_error -= (backbone_error * injected).sum() / injected.square().sum() * injected
    target = backbone_error + injected
    control = backbone_error  # a control head that fits the backbone error perfectly
    frame = torch.arange(NUM_FRAMES).repeat_interleave(PER_FRAME)
    prediction = prediction_of(target, control, injected, generator)
    head = frame_sums(target, prediction, control, injected, frame, NUM_FRAMES)
    control_sums = frame_sums(
        backbone_error, control, torch.zeros(shape), torch.zeros(shape), frame, NUM_FRAMES
    )[:, :3]
    return head.numpy(), control_sums.numpy(), injected


def result_of(head, control):
    return {k: v.item() for k, v in spectrum(head.sum(0)[None], control.sum(0)).items()}


def test_perfect_prediction_recovers_everything():
    head, control, injected = synthetic(lambda t, c, e, g: t)
    result = result_of(head, control)
    assert result["rho"] == pytest.approx(1.0)
    assert result["R2_inj"] == pytest.approx(1.0)
    assert result["gain"] == pytest.approx(injected.square().mean().item() + 0.25, rel=0.05)


def test_control_only_prediction_recovers_nothing():
    head, control, injected = synthetic(lambda t, c, e, g: c)
    result = result_of(head, control)
    assert result["rho"] == pytest.approx(0.0, abs=1e-12)
    # yhat - yhat_none = 0: R2_inj = 1 - mean(e^2) / var(e) (slightly below 0)
    e = injected.numpy()
    assert result["R2_inj"] == pytest.approx(1 - np.mean(e**2) / np.var(e))


def test_pure_noise_prediction_is_negative():
    head, control, _ = synthetic(
        lambda t, c, e, g: c + torch.randn(t.shape, dtype=t.dtype, generator=g)
    )
    result = result_of(head, control)
    assert result["rho"] < -0.5 and result["R2_inj"] < -0.5 and result["gain"] < 0


def test_half_recovery():
    head, control, _ = synthetic(lambda t, c, e, g: c + 0.5 * e)
    result = result_of(head, control)
    # G - G_0 = E[e^2] - E[(e / 2)^2] = 3/4 of the power
    assert result["rho"] == pytest.approx(0.75, rel=1e-9)
    assert result["R2_inj"] == pytest.approx(0.75, abs=0.02)


def test_bootstrap_of_a_clear_cliff():
    from nequip_spectral.theory.bootstrap import summarize

    recovered, _, _ = synthetic(lambda t, c, e, g: t)
    lost, control, _ = synthetic(lambda t, c, e, g: c, seed=1)
    head = np.stack([recovered, lost], axis=1)[None]  # one backbone, l = a and l = b
    result = bootstrap_spectrum(head, control[None], 0, 1, block_length=5, n_replicates=300)
    rho_diff = summarize(result["rho_diff"])
    assert rho_diff["frac_le_0"] == 0.0
    low, high = rho_diff["ci95"]
    assert low <= rho_diff["mean"] <= high and low > 0.8
    # with the roles swapped the difference is negative everywhere
    swapped = bootstrap_spectrum(head, control[None], 1, 0, block_length=5, n_replicates=300)
    assert summarize(swapped["delta"])["frac_le_0"] == 1.0


def _ddp_worker(rank, world_size, init_method, head_half, control_half, results):
    torch.distributed.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world_size
    )
    from nequip_spectral.train.report_writer import gather_frames

    head = gather_frames(torch.as_tensor(head_half[rank]), dim=0)
    control = gather_frames(torch.as_tensor(control_half[rank]), dim=0)
    if rank == 0:
        results.put(result_of(head.numpy(), control.numpy()))
    torch.distributed.destroy_process_group()


def test_ddp_reduction_equals_one_process(tmp_path):
    """Two gloo processes, each with a share of the frames, gather the per-frame sums and
    give the one-process metrics. They meet through a file (``file_rendezvous``), not a TCP
    port picked beforehand (that port could be taken before the workers bind it).

    Mutation tried: ``gather_frames`` returning the rank's own share (``every_rank``
    skipped): fails.
    """
    import torch.multiprocessing as mp

    head, control, _ = synthetic(lambda t, c, e, g: c + 0.3 * e + 0.1 * t)
    single = result_of(head, control)
    halves = ([head[:15], head[15:]], [control[:15], control[15:]])  # unequal shares
    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(
        _ddp_worker,
        args=(2, file_rendezvous(tmp_path), *halves, results),
        nprocs=2,
        start_method="spawn",
    )
    assert results.get(timeout=60) == pytest.approx(single, rel=1e-12)


def test_report_reads_rho_and_the_cliff_from_the_primary_kind():
    from nequip_spectral.report import build_report

    recovered, control, _ = synthetic(lambda t, c, e, g: t)
    lost, _, _ = synthetic(lambda t, c, e, g: c)
    # kinds (forces, energy): forces recovered at l = 4 and 5, energies at neither
    head = np.stack([np.stack([recovered, recovered], 1), np.stack([lost, lost], 1)], 1)[None]
    controls = np.stack([control, control], 1)[None]
    for kinds, expected in ((("forces", "energy"), 1.0), (("energy",), 0.0)):
        measured = slice(0, 2) if len(kinds) == 2 else slice(1, 2)  # energies: the second
        frames = as_frames(head[:, :, measured], controls[:, :, measured], (4, 5), kinds)
        report = build_report(frames)
        assert report["primary"] == kinds[0]
        assert report["per_l"]["4"]["rho"] == pytest.approx(expected, abs=1e-9)
        assert report["cliff"]["rho_boundary"] == pytest.approx(expected, abs=1e-9)
        assert report["per_l"]["4"]["rho_energy"] == pytest.approx(0.0, abs=1e-9)
        if len(kinds) == 2:
            assert report["per_l"]["4"]["rho_forces"] == pytest.approx(1.0)
        else:  # no force spectrum: its values are undefined, not made up
            assert report["per_l"]["4"]["rho_forces"] is None


def test_undefined_values_are_null_in_json_and_na_in_the_table(tmp_path):
    """No injected power above the ceiling (no pair in range): rho there is undefined."""
    import json

    from nequip_spectral.report import build_report, format_table, write_report

    recovered, control, _ = synthetic(lambda t, c, e, g: t)
    silent = recovered.copy()
    silent[:, 3:5] = 1e-17, 1e-34  # l = 5: no injected signal (round-off level e, e^2)
    per_l = np.stack([recovered, silent], 1)  # (frames, l, sums)
    head = np.stack([per_l, per_l], 1)[None]  # (backbones, frames, kinds, l, sums)
    report = build_report(as_frames(head, np.stack([control, control], 1)[None], (4, 5)))
    assert report["per_l"]["5"]["rho"] is None and report["cliff"]["ratio"] is None
    table = format_table(report)
    assert "n/a" in table and "nan" not in table.lower()
    write_report(report, tmp_path)
    text = (tmp_path / "spectral_report.json").read_text()
    assert "NaN" not in text and json.loads(text)["per_l"]["5"]["rho"] is None


def written(report, directory):
    """A report as ``spectral_report.json`` holds it (non-finite numbers as null)."""
    import json

    from nequip_spectral.report import write_report

    write_report(report, directory)
    return json.loads((directory / "spectral_report.json").read_text())


def test_synthetic_reports_match_the_json_schema(tmp_path):
    """The JSON schema of the report (``nequip_spectral/report/schema.json``) holds for
    reports of every shape ``build_report`` writes: both spectra from two backbones, the
    energy spectrum alone, null heads, no cliff (``l_values`` without ``d_r L + 1``), and
    undefined values (no injected power at an ``l``: rho, the ratio and its interval null).
    A key added to or dropped from the report, or a wrong type, is an error.

    Mutation tried: ``per_l_std`` dropped from the report (``build_report``): fails.
    """
    from nequip_spectral.report import build_report

    recovered, control, _ = synthetic(lambda t, c, e, g: t)
    lost, _, _ = synthetic(lambda t, c, e, g: c + 0.2 * e, seed=1)
    silent = recovered.copy()
    silent[:, 3:5] = 1e-17, 1e-34  # no injected signal
    per_l = np.stack([recovered, lost], 1)  # (frames, l = 4, 5, sums)
    both = np.stack([per_l, per_l], 1)  # (frames, kinds, l, sums)
    controls = np.stack([control, control], 1)
    reports = {
        "two backbones": as_frames(np.stack([both, both[:, :, ::-1]]),
                                   np.stack([controls, controls]), (4, 5)),
        "energy alone": as_frames(both[None, :, 1:], controls[None, :, 1:], (4, 5), ("energy",)),
        "null heads": as_frames(np.concatenate([both, both[:, :, ::-1]], 2)[None],
                                controls[None], (4, 5)),
        "no cliff": as_frames(both[None], controls[None], (3, 4)),
        "undefined": as_frames(np.stack([np.stack([recovered, silent], 1)] * 2, 1)[None],
                               controls[None], (4, 5)),
    }
    for case, frames in reports.items():
        report = written(build_report(frames), tmp_path / case.replace(" ", "_"))
        assert report_schema_errors(report) == [], case
        if case == "null heads":
            assert report["null_heads"] and "null_rho_forces_ci95" in report["per_l"]["4"]
        if case == "no cliff":
            assert "note" in report["cliff"] and "delta" not in report
        if case == "undefined":
            assert report["cliff"]["ratio"] is None and report["per_l"]["5"]["rho"] is None

    report = written(build_report(reports["two backbones"]), tmp_path / "changed")
    assert report_schema_errors({**report, "new_key": 1}) == [
        "$: Additional properties are not allowed ('new_key' was unexpected)"
    ]
    assert report_schema_errors({k: v for k, v in report.items() if k != "per_l_std"}) == [
        "$: 'per_l_std' is a required property"
    ]
    row = {**report["per_l"]["4"], "rho_forces": "0.5"}
    assert report_schema_errors({**report, "per_l": {**report["per_l"], "4": row}})
    no_delta = {k: v for k, v in report.items() if k != "delta"}  # the bootstrap ran
    assert report_schema_errors(no_delta)


def recovered_report() -> dict:
    """The report of one backbone that recovers everything at ``l = 4, 5``, both kinds."""
    from nequip_spectral.report import build_report

    recovered, control, _ = synthetic(lambda t, c, e, g: t)
    per_l = np.stack([recovered, recovered], 1)
    head = np.stack([per_l, per_l], 1)[None]
    return build_report(as_frames(head, np.stack([control, control], 1)[None], (4, 5)))


def marks(report, mark) -> dict:
    """``{"4": True, "5": False}``: which rows of the printed table carry ``mark``."""
    from nequip_spectral.report import format_table

    return {line.split()[0]: mark in line for line in format_table(report).splitlines()[2:4]}


def test_the_table_marks_a_reading_whose_interval_reaches_into_the_null_floor():
    """``~`` where rec's interval reaches into the floor (a small reading whose interval
    covers it, as on the alloy's l = 5), not where the interval clears it."""
    report = recovered_report()
    report["null_floor"] = {"rho_recovered_forces": [-0.006, 0.004]}
    rows = report["per_l"]
    rows["4"].update(rho_recovered_forces=0.8, rho_recovered_forces_ci95=[0.7, 0.9])
    rows["5"].update(rho_recovered_forces=0.005, rho_recovered_forces_ci95=[-0.001, 0.012])

    assert marks(report, "~") == {"4": False, "5": True}
    rows["5"]["rho_recovered_forces_ci95"] = [0.0045, 0.006]  # clears the floor
    assert marks(report, "~") == {"4": False, "5": False}


def test_the_table_marks_a_reading_wholly_below_the_null_floor_and_says_why():
    """``!`` (and the line that explains it) where rec's whole interval lies below the floor's
    lower end (the heads fitted what the test frames do not share, as on the alloy's l = 5
    before folds of consecutive frames), not where it reaches into the floor."""
    report = recovered_report()
    report["null_floor"] = {"rho_recovered_forces": [-0.006, 0.004]}
    rows = report["per_l"]
    rows["4"].update(rho_recovered_forces=-0.109, rho_recovered_forces_ci95=[-0.206, -0.028])
    rows["5"].update(rho_recovered_forces=-0.004, rho_recovered_forces_ci95=[-0.007, -0.001])
    assert marks(report, "!") == {"4": True, "5": False}
    assert marks(report, "~") == {"4": False, "5": True}
    from nequip_spectral.report import format_table

    assert "! rec's interval lies below the null floor" in format_table(report)
    rows["4"]["rho_recovered_forces_ci95"] = [-0.206, -0.006]  # touches the floor's lower end
    assert marks(report, "!") == {"4": False, "5": False}


def test_the_table_stars_a_reading_whose_chance_part_outweighs_its_recovered_part():
    """``*`` where rho's chance part is larger in magnitude than its recovered part, of either
    sign: a negative chance part of -0.5 against 0.2 recovered is marked, a chance part of
    0.1 against -0.3 recovered is not."""
    report = recovered_report()
    rows = report["per_l"]
    assert marks(report, "*") == {"4": False, "5": False}  # all recovered, no chance part
    for kind in ("forces", "energy"):
        rows["4"].update({f"rho_chance_{kind}": -0.5, f"rho_recovered_{kind}": 0.2})
        rows["5"].update({f"rho_chance_{kind}": 0.1, f"rho_recovered_{kind}": -0.3})
    assert marks(report, "*") == {"4": True, "5": False}

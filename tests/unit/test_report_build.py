"""The report built from per-frame sums whose readings are known: the null floor and its check
above the ceiling, the ceiling ``d_r L`` and the cliff's interval."""

import numpy as np
import pytest
from helpers import as_frames, known_readings

from nequip_spectral.report import build_report, format_table
from nequip_spectral.report.build import _ratio_interval
from nequip_spectral.theory.metrics import null_floor


def test_the_null_floor_is_made_from_the_null_heads_rho_recovered():
    """``null_floor`` is :func:`null_floor` of the null heads' readings (mean over backbones),
    ``rho_recovered_*`` of their ``rho_recovered`` and ``rho_*`` of their ``rho``: neither
    the real heads' readings nor the other metric enter it."""
    l_values = (1, 2, 3, 4, 5)  # heads: l = 1..5, then the null heads of l = 1..5
    real_rho, real_recovered = [0.9, 0.8, 0.7, 0.6, 0.1], [0.85, 0.75, 0.6, 0.5, 0.05]
    null_rho = np.array([[0.3, -0.1, 0.2, 0.05, -0.2], [0.1, 0.1, 0.0, 0.25, -0.4]])
    null_recovered = np.array([[0.01, -0.02, 0.0, 0.03, -0.01], [0.03, 0.0, -0.04, 0.01, 0.0]])
    rho = np.concatenate([[real_rho] * 2, null_rho], 1)
    recovered = np.concatenate([[real_recovered] * 2, null_recovered], 1)
    report = build_report(as_frames(*known_readings(rho, recovered), l_values, ("forces",)))

    assert report["null_heads"]
    floor = report["null_floor"]
    expected = null_floor(null_recovered.mean(0))
    assert floor["rho_recovered_forces"] == pytest.approx(expected, rel=1e-12)
    assert floor["rho_forces"] == pytest.approx(null_floor(null_rho.mean(0)), rel=1e-12)
    for other in (null_floor(null_rho.mean(0)), null_floor(recovered.mean(0))):
        assert floor["rho_recovered_forces"] != pytest.approx(other, rel=1e-3)
    assert report["per_l"]["4"]["null_rho_recovered_forces"] == pytest.approx(0.02)


def test_the_floor_check_counts_the_readings_above_the_ceiling_outside_the_floor():
    """Above the ceiling (l = 5, 6, 7 for d_r L = 4) there is nothing to recover: the report
    counts their rec values below and above the null floor (here one of each), and none of
    the readings at or below the ceiling; the table prints the count."""
    from nequip_spectral.report import format_table

    l_values = (1, 2, 3, 4, 5, 6, 7)
    real = [0.9, 0.8, -0.5, 0.6, -0.3, 0.0, 0.4]  # l = 3 below the floor: not counted
    nulls = [0.01, -0.02, 0.0, 0.03, -0.01, 0.02, 0.0]
    recovered = np.array([real + nulls])
    rho = recovered + 1.0  # rho itself is not what the check reads
    report = build_report(as_frames(*known_readings(rho, recovered), l_values,
                                    ("forces",)))  # fmt: skip
    low, high = report["null_floor"]["rho_recovered_forces"]
    assert low > -0.3 and high < 0.4  # l = 5 below it, l = 7 above it, l = 6 inside
    assert report["floor_check"] == {"forces": {"readings": 3, "below": 1, "above": 1}}
    table = format_table(report)
    assert "outside the null floor: rec_F 2 of 3" in table
    floor_line = next(line for line in table.splitlines() if line.startswith("null floor"))
    assert "rec_F [" in floor_line and "rec_E" not in floor_line  # (one spectrum measured)


@pytest.mark.parametrize("L, degree", [(3, 2), (1, 3)])
def test_the_ceiling_is_degree_times_L(L, degree):
    """With ``L != d_r`` the ceiling is ``d_r L`` (6 for L = 3, d_r = 2; 3 for L = 1,
    d_r = 3; not ``d_r + L``), and the cliff is read at it and one above."""
    l_values = tuple(range(1, 8))
    rho = np.array([[1.0 / l for l in l_values]])  # rho(l) = 1 / l
    report = build_report(as_frames(*known_readings(rho, rho), l_values, ("forces",), L, degree))
    ceiling = degree * L
    assert report["boundary"] == ceiling and report["L"] == L and report["degree"] == degree
    assert report["cliff"]["rho_boundary"] == pytest.approx(1.0 / ceiling)
    assert report["cliff"]["ratio"] == pytest.approx((ceiling + 1) / ceiling)


def test_the_cliff_interval_with_no_power_above_the_ceiling():
    """Every replicate with ``rho_b <= 0`` (0 included): the ratio is unbounded in every one,
    so both ends are null and the unbounded fraction is 1."""
    rho_a = np.array([-0.5, 0.3, 0.0, 0.4])
    rho_b = np.array([0.0, -0.1, 0.0, -0.2])
    assert _ratio_interval(rho_a, rho_b) == {
        "ratio_ci95": [None, None],
        "ratio_unbounded_fraction": 1.0,
    }


def test_the_cliff_interval_of_a_mix_of_bounded_and_unbounded_replicates():
    """30 replicates with ratios 2.0 .. 4.9, 5 with ``rho_b = 0`` (and ``rho_a < 0``) and 5 with
    ``rho_b < 0`` (and ``rho_a > 0``): the 10 are unbounded (+inf, not ``rho_a / rho_b``'s
    -inf or negative values), so the interval is [2.0, null] and the fraction 0.25."""
    rho_a = np.concatenate([2.0 + 0.1 * np.arange(30), [-1.0] * 5, [1.0] * 5])
    rho_b = np.concatenate([np.ones(30), [0.0] * 5, [-0.5] * 5])
    interval = _ratio_interval(rho_a, rho_b)
    assert interval["ratio_ci95"] == [pytest.approx(2.0), None]
    assert interval["ratio_unbounded_fraction"] == 0.25


def test_delta_and_rho_diff_print_their_estimates_and_an_undefined_cliff_no_interval():
    """``delta`` and ``rho_diff`` are read on the test frames, not averaged over bootstrap
    replicates (the estimate does not move with their number); the cliff's ratio, undefined
    where nothing is recovered above the ceiling, gets no interval."""
    rng = np.random.default_rng(0)
    rho = np.array([[0.9, 0.8, 0.3, 0.1]]) + 0.05 * rng.standard_normal((1, 4))
    head, control = known_readings(rho, rho, num_frames=12)
    head[..., 1] *= 1 + 0.3 * rng.standard_normal(head.shape[:-1])  # frames that differ
    frames = as_frames(head, control, [0, 3, 4, 5], ("forces",))
    few, many = (build_report(frames, n_bootstrap=n) for n in (20, 400))
    for name in ("delta", "rho_diff"):
        assert few[name]["estimate"] == many[name]["estimate"]
        assert few[name]["mean"] != many[name]["mean"]
    rows = few["per_l"]
    assert few["rho_diff"]["estimate"] == pytest.approx(rows["4"]["rho"] - rows["5"]["rho"])
    assert f"rho_diff (forces) = {few['rho_diff']['estimate']:.4f}," in format_table(few)
    assert "blocks of 1 test frame in" in format_table(build_report(frames, 20, block_length=1))
    head[..., 3, 1] = -0.2  # rho above the ceiling (l = 5) below 0: the ratio is undefined
    undefined = build_report(as_frames(head, control, [0, 3, 4, 5], ("forces",)), 50)
    cliff = next(line for line in format_table(undefined).splitlines()
                 if line.startswith("cliff"))  # fmt: skip
    assert "n/a (not defined" in cliff and "95% CI" not in cliff


def test_the_table_keeps_its_columns_for_wide_readings():
    """A reading of thousands (a tiny injected power) is printed in powers of ten: every row
    keeps the columns of the others and the table stays within 120 columns."""
    from nequip_spectral.report.table import number

    assert number(-1693.745) == "-1.7e3" and number(0.5, 8) == "   0.500" and number(None) == "n/a"
    rng = np.random.default_rng(1)
    rho = np.array([[0.9, 0.8, 0.3, 0.1]]) + 0.05 * rng.standard_normal((1, 4))
    head, control = known_readings(rho, rho, num_frames=12)
    report = build_report(as_frames(head, control, [0, 3, 4, 5], ("forces",)), n_bootstrap=50)
    report["per_l"]["3"]["rho_forces"] = -1693.745
    report["per_l"]["3"]["rho_forces_ci95"] = [-1693.745, 2568.341]
    rows = [line for line in format_table(report).splitlines() if line[:3].strip().isdigit()]
    assert len({len(row) for row in rows if "ceiling" not in row}) == 1
    assert "[-1.7e3, 2.6e3]" in rows[1]
    assert max(map(len, format_table(report).splitlines())) <= 120

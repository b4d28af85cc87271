"""``nequip-spectral-compare`` on two small reports of different ceilings."""

import csv
import json

import numpy as np
import pytest
from helpers import as_frames

from nequip_spectral.report import build_report, write_report
from nequip_spectral.scripts import compare


def small_run(directory, l_values, L, recovered):
    """A run directory with a report whose rho_F and rec_F are 1 at the ``recovered`` l, 0
    elsewhere."""
    num_frames = 12
    head = np.zeros((1, num_frames, 1, len(l_values), 6))
    head[..., 0] = head[..., 4] = 1.0  # n, ee: unit injected power
    for i, l in enumerate(l_values):
        head[0, :, 0, i, 1] = 1.0 if l in recovered else 0.0  # tt - rr = gain
        head[0, :, 0, i, 5] = 0.0 if l in recovered else 1.0  # aa: 1 - rec
    control = np.zeros((1, num_frames, 1, 3))
    control[..., 0] = 1.0
    write_report(build_report(as_frames(head, control, l_values, ("forces",), L)), directory)
    return directory


def test_compare_writes_one_table_and_one_plot(tmp_path, capsys):
    a = small_run(tmp_path / "a", (1, 2, 3), L=1, recovered={1, 2})
    b = small_run(tmp_path / "b", (2, 4, 5), L=2, recovered={2, 4})
    output = tmp_path / "compared"
    compare.main([str(a), str(b), "--labels", "L1", "L2", "--output", str(output)])
    with open(output / "spectral_compare.csv") as f:
        rows = {row["l"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["1", "2", "3", "4", "5"]
    assert float(rows["2"]["L1:rho_forces"]) == pytest.approx(1.0)
    assert float(rows["2"]["L1:rho_recovered_forces"]) == pytest.approx(1.0)
    assert float(rows["3"]["L1:rho_recovered_forces"]) == pytest.approx(0.0)
    assert float(rows["3"]["L1:rho_recovered_forces_ci95_low"]) == pytest.approx(0.0)
    assert float(rows["3"]["L1:rho_forces"]) == pytest.approx(0.0)
    assert rows["3"]["L2:rho_forces"] == ""  # not probed by that run
    assert float(rows["4"]["L2:rho_forces"]) == pytest.approx(1.0)
    assert rows["4"]["L1:rho_energy"] == ""  # no energy spectrum measured
    assert (output / "spectral_compare.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    ceilings = {line.split()[0]: line.split("<- ceiling of ")[1]
                for line in table.splitlines() if "<- ceiling of " in line}  # fmt: skip
    assert ceilings == {"2": "L1", "4": "L2"}  # d_r L (d_r = 2): for L = 1 not d_r + L = 3
    assert "null floor of L1: none (no null heads)" in table
    with pytest.raises(SystemExit):  # an earlier comparison is never overwritten
        compare.main([str(a), str(b), "--output", str(output)])
    with pytest.raises(SystemExit):
        compare.main([str(a), str(tmp_path / "missing"), "--output", str(tmp_path / "x")])


def test_compare_reads_rec_against_each_runs_null_floor(tmp_path, capsys):
    """The printed table reads rec, marked as the run's own table marks it (``!``: wholly
    below the run's floor, with the line that explains it; ``~``: reaching into it), and
    gives each run's floor."""
    run = small_run(tmp_path / "a", (1, 2, 3), L=1, recovered={1, 2})
    report_file = run / "spectral_report.json"
    report = json.loads(report_file.read_text())
    report["null_floor"] = {"rho_recovered_forces": [0.2, 0.5]}  # l = 3 reads 0, below it
    report["per_l"]["2"]["rho_recovered_forces_ci95"] = [0.4, 1.0]  # l = 2 reaches into it
    report_file.write_text(json.dumps(report))
    compare.main([str(run), "--labels", "a", "--output", str(tmp_path / "compared")])
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines()[3:6]}  # the force spectrum's
    assert "0.000!" in rows["3"] and "!" not in rows["1"] + rows["2"]
    assert "1.000~" in rows["2"] and "~" not in rows["1"] + rows["3"]
    assert rows["2"].split()[1:4] == ["1.000", "1.000~", "[0.400,"]  # rho, rec, rec's interval
    assert "null floor of a: rec_F [0.200, 0.500]" in table
    assert "! rec's interval lies below the null floor" in table


def test_runs_of_the_same_name_get_labels_of_their_own(tmp_path, capsys):
    """Two runs both called ``probe`` are labelled by the ends of their paths that differ; a
    label given twice is refused."""
    a = small_run(tmp_path / "first" / "probe", (1, 2, 3), L=1, recovered={1})
    b = small_run(tmp_path / "second" / "probe", (1, 2, 3), L=1, recovered={2})
    compare.main([str(a), str(b), "--output", str(tmp_path / "compared")])
    with open(tmp_path / "compared" / "spectral_compare.csv") as f:
        header = next(csv.reader(f))
    assert "first/probe:rho_forces" in header and "second/probe:rho_forces" in header
    assert compare.run_labels([a, a]) == ["probe (0)", "probe (1)"]
    with pytest.raises(SystemExit):
        compare.main([str(a), str(b), "--labels", "x", "x", "--output", str(tmp_path / "y")])
    assert "each run needs its own label" in capsys.readouterr().err

"""End to end: ``nequip-train`` on the example probe config, the evaluation, bad inputs."""

import csv
import json
import math
import re
import subprocess

import ase.io
import numpy as np
import pytest
import torch
from helpers import (
    CONFIGS,
    nequip_train,
    report_schema_errors,
    train_tiny_backbone,
    write_rmd17_npz,
)

from nequip_spectral.report import format_table
from nequip_spectral.report.frames import FrameSums
from nequip_spectral.train.lightning import BEST_HEADS_KEY
from nequip_spectral.train.report_writer import KNOWN_TIPS, KNOWN_WARNINGS

L_VALUES = [0, 3, 4, 5]


def probe_overrides(backbone, dataset):
    return [
        f"dataset_file={dataset}",
        f"spectral_probe.backbones=[{backbone}]",
        f"spectral_probe.l_values=[{','.join(map(str, L_VALUES))}]",
        "spectral_probe.channels=2",
        "max_epochs=1",
    ]


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, tiny_backbone, tiny_aspirin):
    """A probe run on the CPU, whatever device trained the backbone (the runs compared with it,
    evaluation and DDP, run on the CPU too)."""
    run_dir = tmp_path_factory.mktemp("probe") / "run"
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)
    result = nequip_train("aspirin_probe.yaml", run_dir, *overrides, "++trainer.accelerator=cpu")
    return run_dir, result


def test_probe_run_writes_the_report(probe_run):
    run_dir, result = probe_run
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert report["L"] == 2 and report["degree"] == 2 and report["boundary"] == 4
    assert report["l_values"] == L_VALUES and report["n_backbones"] == 1
    for row in report["per_l"].values():
        for key in ("rho", "R2_inj_forces", "R2_inj_energy", "gain_forces", "gain_energy"):
            assert math.isfinite(row[key]), key
    assert "rho_boundary" in report["cliff"] and "ci95" in report["delta"]
    with open(run_dir / "spectral_report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["backbone"] for row in rows] == ["0"] * len(L_VALUES) + ["mean"] * len(L_VALUES)
    assert all(float(row["rho_forces_ci95_low"]) <= float(row["rho_forces_ci95_high"])
               for row in rows[len(L_VALUES):])  # fmt: skip
    assert (run_dir / "spectral_report.png").stat().st_size > 10_000
    assert "<- ceiling" in result.stdout


def test_the_table_is_the_last_thing_printed_and_the_known_noise_is_gone(probe_run):
    """The spectral table closes the run's output (after Lightning's table of test metrics),
    at most 120 columns, its key last; none of Lightning's known harmless messages; the logs
    in the run directory."""
    run_dir, result = probe_run
    table = format_table(json.loads((run_dir / "spectral_report.json").read_text()))
    lines = result.stdout.rstrip().splitlines()
    end = lines.index(table.splitlines()[-1])
    assert end >= len(lines) - 3  # then the report's path and NequIP's "TEST RUN END"
    assert lines[end - len(table.splitlines()) + 1 : end + 1] == table.splitlines()
    assert result.stdout.rindex("test0_epoch/weighted_sum") < result.stdout.rindex(table)
    assert max(map(len, table.splitlines())) <= 120 and table.splitlines()[-2].startswith("key:")
    output = result.stdout + result.stderr
    for noise in (*KNOWN_WARNINGS, KNOWN_TIPS, "weights_only", "RuntimeWarning",
                  "configure_optimizers"):  # fmt: skip
        assert not re.search(noise if noise in KNOWN_WARNINGS else re.escape(noise), output)
    assert (run_dir / "lightning_logs" / "version_0" / "metrics.csv").is_file()


def test_the_per_frame_file_places_every_test_frame_in_its_file(probe_run, tiny_aspirin):
    run_dir, _ = probe_run
    frames = FrameSums.load(run_dir)
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert frames.head.shape[1] == report["n_test_frames"] == len(frames.source_index)
    assert set(frames.source_file) == {str(tiny_aspirin)}
    indices = frames.source_index.tolist()
    assert indices == sorted(set(indices)) and 0 <= indices[0] and indices[-1] < 40
    assert report["bootstrap"]["frame_order"] == "source"


def test_the_report_is_rebuilt_from_the_per_frame_file(probe_run, tmp_path):
    run_dir, _ = probe_run
    output = tmp_path / "rebuilt"
    result = subprocess.run(["nequip-spectral-report", str(run_dir), "--output", str(output)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    for name in ("spectral_report.json", "spectral_report.csv"):
        assert (output / name).read_text() == (run_dir / name).read_text(), name
    assert (output / "spectral_report.png").is_file() and "<- ceiling" in result.stdout
    again = subprocess.run(["nequip-spectral-report", str(run_dir), "--output", str(output)],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode != 0 and "already holds" in again.stderr


def test_the_reports_of_real_runs_match_the_json_schema(probe_run, sgd_run):
    """A closed-form run's report (null heads, the bootstrap) and a gradient-descent run's
    (no null heads) hold to ``nequip_spectral/report/schema.json``.

    Mutation tried: ``per_l_std`` dropped from the report (``build_report``): fails.
    """
    for run_dir in (probe_run[0], sgd_run[0]):
        report = json.loads((run_dir / "spectral_report.json").read_text())
        assert report_schema_errors(report) == [], run_dir
    assert report["null_heads"] is False  # the sgd run's


def test_the_report_and_compare_scripts_run_on_a_probe_run(probe_run, tmp_path):
    """``nequip-spectral-report`` with its bootstrap options (loader order, 50 replicates,
    blocks of 2 frames) writes a report that says so, and ``nequip-spectral-compare`` puts
    it beside the run's own: a table row per ``l`` holding each report's readings, the plot,
    the ceiling marked.

    Mutation tried: ``--frame-order`` ignored by ``nequip-spectral-report`` (``build_report``
    called without it): fails.
    """
    run_dir, _ = probe_run
    rebuilt = tmp_path / "loader_order"
    subprocess.run(
        ["nequip-spectral-report", str(run_dir), "--output", str(rebuilt), "--frame-order",
         "loader", "--n-bootstrap", "50", "--block-length", "2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads((rebuilt / "spectral_report.json").read_text())
    assert report["bootstrap"]["frame_order"] == "loader"
    assert report["bootstrap"]["replicates"] == 50 and report["bootstrap"]["block_length"] == 2
    assert report_schema_errors(report) == []
    own = json.loads((run_dir / "spectral_report.json").read_text())
    assert report["per_l"]["4"]["rho"] == pytest.approx(own["per_l"]["4"]["rho"])  # sums

    compared = tmp_path / "compared"
    result = subprocess.run(
        ["nequip-spectral-compare", str(run_dir), str(rebuilt), "--labels", "run", "loader",
         "--output", str(compared)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    with open(compared / "spectral_compare.csv") as f:
        rows = {row["l"]: row for row in csv.DictReader(f)}
    assert list(rows) == [str(l) for l in L_VALUES]
    for label, source in (("run", own), ("loader", report)):
        for l, row in rows.items():
            for column in ("rho_forces", "R2_inj_energy"):
                assert float(row[f"{label}:{column}"]) == pytest.approx(
                    source["per_l"][l][column]
                ), (label, l, column)
    assert (compared / "spectral_compare.png").stat().st_size > 10_000
    assert "<- ceiling of run, loader" in result.stdout


def heads_only(checkpoint_path):
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    weights = [k for k in checkpoint["state_dict"] if k.startswith("model.")]
    assert weights
    assert all(".heads." in k or ".shifts." in k or "center_types" in k for k in weights)
    return checkpoint


def test_the_closed_form_pass_is_an_epoch_with_progress_validation_and_checkpoints(
    tiny_backbone, tiny_aspirin, tmp_path
):
    """The closed form as Lightning's own epoch: the progress bar counts the pass's batches
    (done / total) before the solve line, the solved heads are validated (a checkpoint that
    monitors the validation loss finds it) and ``ModelCheckpoint`` writes best and last
    itself, after the one step that is the solve."""
    run_dir = tmp_path / "run"
    command = [
        "nequip-train", "-cp", str(CONFIGS), "-cn", "aspirin_probe.yaml",
        f"hydra.run.dir={run_dir}", *probe_overrides(tiny_backbone["ckpt"], tiny_aspirin),
        "run=[train]", "data.train_dataloader.batch_size=7",
        "++trainer.callbacks.0.monitor=val0_epoch/weighted_sum",
    ]  # fmt: skip
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    output = result.stdout
    solve_line = output.index("closed form: solving")
    done = [(int(a), int(b)) for a, b in re.findall(r"Epoch 0:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)",
                                                    output[:solve_line])]  # fmt: skip
    assert (1, 4) in done and all(total == 4 for _, total in done)  # 28 frames, 7 a batch
    assert "closed form: 32 frames collected in" in output[solve_line:]
    best = torch.load(run_dir / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["global_step"] == 1  # one step: the solve
    state = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert state["best_model_path"] == str(run_dir / "best.ckpt")
    assert math.isfinite(float(state["best_model_score"]))  # the solved heads' val loss
    assert (run_dir / "last.ckpt").exists()


def test_closed_form_checkpoint_holds_the_solved_heads_only(probe_run):
    run_dir, result = probe_run
    heads_only(run_dir / "best.ckpt")
    assert "closed form: " in result.stdout and "ridge strengths" in result.stdout
    from nequip.model import ModelFromCheckpoint

    probe = ModelFromCheckpoint(str(run_dir / "best.ckpt"))["sole_model"].model
    for fit, per_backbone in probe.heads.items():
        assert per_backbone[0].weights.abs().sum() > 0, fit  # solved, not the zeros of init
        assert not torch.isnan(per_backbone[0].alpha).any(), fit  # (inf: no feature weight)
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert report["solver"]["name"] == "closed_form"
    assert report["solver"]["features"] == probe.heads["e"][0].features.num_features
    assert report["solver"]["ridge_folds"] == 5
    said = " ".join(result.stdout.split())  # (the lines are wrapped)
    assert "ridge strengths chosen by 5-fold cross-validation on consecutive frames" in said
    assert re.search(r"e_l0=\S+, e_l3=\S+, e_l4=\S+", said) and "f_none=" in said
    # force_directions: auto gives aspirin (21 atoms) every force component, and says so
    rows = {"setting": "auto", "atoms": [21, 21], "per_frame": [63, 63], "all_components": True}
    assert report["solver"]["force_rows"] == rows
    assert "force rows: 63 a frame of 21 atoms, every component (force_directions: auto)" in (
        result.stdout
    )
    assert set(report["spectra"]) == {"forces", "energy"}


@pytest.fixture(scope="module")
def sgd_run(tmp_path_factory, tiny_backbone, tiny_aspirin):
    run_dir = tmp_path_factory.mktemp("sgd") / "run"
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)
    nequip_train("aspirin_probe.yaml", run_dir, *overrides, "solver=sgd")
    return run_dir, overrides


def test_sgd_probe_trains_the_heads_only(sgd_run):
    run_dir, _ = sgd_run
    checkpoint = heads_only(run_dir / "last.ckpt")
    from nequip.model import ModelFromCheckpoint

    probe = ModelFromCheckpoint(str(run_dir / "last.ckpt"))["sole_model"]
    trained = sum(p.numel() for p in probe.parameters())
    optimized = sum(
        state["exp_avg"].numel() for state in checkpoint["optimizer_states"][0]["state"].values()
    )
    assert optimized == trained
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert report["solver"] == {"name": "sgd"}


def test_evaluate_reproduces_the_test_metrics(probe_run, tiny_aspirin, tmp_path):
    """``nequip-evaluate`` (the same command as ``nequip-spectral-evaluate``) reproduces the
    run's readings, its table last; another dataset is tested whole."""
    run_dir, _ = probe_run
    before = files_of(run_dir)
    output = tmp_path / "evaluation"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(["nequip-evaluate", str(run_dir), "--output", str(output)],
                            check=True, cwd=elsewhere, capture_output=True, text=True)  # fmt: skip
    assert any(line.startswith("key:") for line in result.stdout.splitlines()[-5:])
    trained = json.loads((run_dir / "spectral_report.json").read_text())
    evaluated = json.loads((output / "spectral_report.json").read_text())
    for l, row in trained["per_l"].items():
        for key, value in row.items():
            assert evaluated["per_l"][l][key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    assert files_of(run_dir) == before

    # another dataset: every frame of it is tested
    other = tmp_path / "other"
    subprocess.run(
        ["nequip-spectral-evaluate", str(run_dir), "--dataset-file", str(tiny_aspirin), "--output",
         str(other)],
        check=True,
    )  # fmt: skip
    assert json.loads((other / "spectral_report.json").read_text())["n_test_frames"] == 40
    refused = subprocess.run(
        ["nequip-spectral-evaluate", str(run_dir), "--output", str(other)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0 and "exists" in refused.stderr


def files_of(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_evaluate_stops_when_the_backbone_file_has_gone(tiny_backbone, tiny_aspirin, tmp_path):
    """A run probed a copy of the backbone; the copy is deleted; ``nequip-spectral-evaluate``
    exits non-zero naming the missing file, leaves no output directory behind and touches
    none of the run's files.

    Mutation tried: ``evaluate.py`` without the ``shutil.rmtree`` of a failed try's new
    directory (fails: the output directory is left behind).
    """
    import shutil

    copy = tmp_path / "copied_backbone.ckpt"
    shutil.copy(tiny_backbone["ckpt"], copy)
    run_dir = tmp_path / "run"
    overrides = probe_overrides(str(copy), tiny_aspirin)
    nequip_train("aspirin_probe.yaml", run_dir, *overrides, "force_spectrum=false")
    copy.unlink()
    before = files_of(run_dir)
    output = tmp_path / "evaluation"
    result = subprocess.run(["nequip-spectral-evaluate", str(run_dir), "--output", str(output)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode != 0
    assert f"spectral_probe.backbones: no such file: {copy}" in result.stderr
    assert not output.exists()
    assert files_of(run_dir) == before


@pytest.fixture()
def broken_aspirin(tmp_path, tiny_aspirin):
    frames = ase.io.read(tiny_aspirin, index=":")
    forces = frames[5].get_forces()
    forces[2, 0] = np.nan
    frames[5].calc.results["forces"] = forces
    path = tmp_path / "broken.extxyz"
    ase.io.write(path, frames)
    return path


def bad_data_file(case, tiny_aspirin, directory):
    """The tiny data with one bad frame: 9 without a finite energy (``nonfinite_energy``), or
    every frame with a marked direction ``efield``, 7's of length 4 (``direction_length``)."""
    frames = ase.io.read(tiny_aspirin, index=":")
    if case == "nonfinite_energy":
        frames[9].calc.results["energy"] = float("nan")
    else:
        for index, atoms in enumerate(frames):
            atoms.info["efield"] = np.array([0.0, 0.6, 0.8] + [0.0] * (index == 7))
    path = directory / f"{case}.extxyz"
    ase.io.write(path, frames)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_backbone", "spectral_probe.backbones: no such file"),
        ("overlap", "spectral_probe.neighbors: ['C'] also appear in centers"),
        ("degree", "spectral_probe.degree: must be 1, 2 or 3, got 5"),
        ("cutoff", "spectral_probe.cutoff: 6.0 exceeds"),
        ("nonfinite_frame", "frame 5 of"),
        ("nonfinite_energy", "non-finite total_energy"),
        ("direction_length", "field 'efield' must be a finite, nonzero 3-vector per frame"),
        ("neighbor_symbol", "spectral_probe.neighbors: 'Xx' is not a chemical symbol"),
        ("missing_data", "data.split_dataset.file_path: no file"),
        ("existing_run", "already holds"),
        ("closed_form_epochs", "trainer.max_epochs: spectral_probe.solver: closed_form fits"),
    ],
)
def test_bad_input_stops_before_training(
    case, message, probe_run, tiny_backbone, tiny_aspirin, broken_aspirin, tmp_path
):
    """Each bad input stops ``nequip-train`` before training with a message naming the key,
    or the frame and its file. The cases ``nonfinite_energy``, ``direction_length`` and
    ``neighbor_symbol``: a NaN energy in frame 9, frame 7's ``field:efield`` marked direction
    of length 4, ``spectral_probe.neighbors=[Xx]``.

    Mutation tried: ``_check_finite`` (data/injection.py) checking positions and forces only
    (fails ``nonfinite_energy``, which then trains).
    """
    run_dir, _ = probe_run
    earlier = files_of(run_dir)
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)
    target = tmp_path / "new_run"
    bad_frame = {"nonfinite_frame": (5, broken_aspirin)}
    if case in ("nonfinite_energy", "direction_length"):
        bad_frame[case] = (9 if case == "nonfinite_energy" else 7,
                           bad_data_file(case, tiny_aspirin, tmp_path))  # fmt: skip
    extra = {
        "missing_backbone": [f"spectral_probe.backbones=[{tmp_path / 'missing.ckpt'}]"],
        "overlap": ["spectral_probe.neighbors=[H,C]"],
        "degree": ["spectral_probe.degree=5"],
        "cutoff": ["spectral_probe.cutoff=6.0"],
        "nonfinite_frame": [],
        "nonfinite_energy": [],
        "direction_length": ["spectral_probe.marked_direction=field:efield",
                             "+data.include_keys=[efield]"],
        "neighbor_symbol": ["spectral_probe.neighbors=[Xx]"],
        "missing_data": [f"dataset_file={tmp_path / 'missing.extxyz'}"],
        "existing_run": [],
        "closed_form_epochs": ["trainer.max_epochs=3"],
    }[case]
    if case in bad_frame:
        extra.append(f"dataset_file={bad_frame[case][1]}")
    if case == "existing_run":
        target = run_dir
    result = nequip_train("aspirin_probe.yaml", target, *overrides, *extra, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    if case in bad_frame:  # the frame by its index in its file
        index, path = bad_frame[case]
        assert f"frame {index} of {path}: " in result.stderr
    if case == "nonfinite_frame":
        assert "non-finite forces" in result.stderr
    if case == "missing_data":
        assert str(tmp_path / "missing.extxyz") in result.stderr
    assert not (target / "last.ckpt").exists() or case == "existing_run"
    now = files_of(run_dir)
    # Hydra appends its log to an existing run directory before the probe starts
    assert now.pop("train.log").startswith(earlier.pop("train.log"))
    assert now == earlier


def test_a_run_resumed_in_its_own_directory_goes_on(sgd_run, tiny_aspirin, tmp_path):
    """``++ckpt_path=`` goes on from the checkpoint: the second epoch only, and each head's best
    epoch chosen among both. The resumed epoch validates on frames whose energies are 100 eV
    off, so every head's best stays the first epoch's: a run that lost the heads' choices in
    the checkpoint (or started afresh) would hold the second epoch's."""
    run_dir, overrides = sgd_run
    before = json.loads((run_dir / "spectral_report.json").read_text())
    first = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    frames = ase.io.read(tiny_aspirin, index=":")
    for atoms in frames:
        atoms.calc.results["energy"] += 100.0
    shifted = tmp_path / "shifted.extxyz"
    ase.io.write(shifted, frames)
    overrides = [o for o in overrides if not o.startswith("dataset_file=")]
    result = nequip_train(
        "aspirin_probe.yaml", run_dir, *overrides, f"dataset_file={shifted}", "solver=sgd",
        "max_epochs=2", f"++ckpt_path={run_dir / 'last.ckpt'}",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "already holds" not in output
    assert "Epoch 1" in output and "Epoch 0" not in output  # went on, did not start again
    resumed = torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1
    choices = [[(key, loss) for key, loss, _ in c[BEST_HEADS_KEY]] for c in (first, resumed)]
    assert choices[0] and choices[1] == choices[0]
    assert json.loads((run_dir / "spectral_report.json").read_text()) != before
    # the resumed run's config holds its ckpt_path: the evaluation leaves it out
    output = run_dir.parent / "evaluated_after_resume"
    subprocess.run(["nequip-spectral-evaluate", str(run_dir), "--output", str(output)], check=True)
    assert (output / "spectral_report.json").is_file()


def test_data_without_forces_stops_or_gives_the_energy_spectrum(tiny_backbone, tiny_aspirin,
                                                                tmp_path):  # fmt: skip
    frames = ase.io.read(tiny_aspirin, index=":")
    for atoms in frames:
        energy = atoms.get_potential_energy()
        atoms.calc = None
        atoms.info["energy"] = energy
    path = tmp_path / "energies_only.extxyz"
    ase.io.write(path, frames)
    overrides = [*probe_overrides(tiny_backbone["ckpt"], tiny_aspirin), f"dataset_file={path}"]
    refused = nequip_train("aspirin_probe.yaml", tmp_path / "refused", *overrides, check=False)
    assert refused.returncode != 0
    assert "has no 'forces'" in refused.stderr and "force_spectrum: false" in refused.stderr
    assert not (tmp_path / "refused" / "best.ckpt").exists()

    run_dir = tmp_path / "energies"
    nequip_train("aspirin_probe.yaml", run_dir, *overrides, "force_spectrum=false")
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert report["primary"] == "energy" and list(report["spectra"]) == ["energy"]
    assert all(row["rho_forces"] is None for row in report["per_l"].values())
    assert all(row["rho_energy"] is not None for row in report["per_l"].values())


def nequip_splits(dataset) -> dict:
    """``{split: [index in the file of each frame]}`` of the probe config's data block, as
    NequIP's own ``ASEDataModule`` splits ``dataset``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from nequip_spectral.report.frames import frame_source

    block = OmegaConf.load(CONFIGS / "data" / "aspirin.yaml").data
    block.split_dataset.file_path = str(dataset)
    block.seed = OmegaConf.load(CONFIGS / "aspirin_probe.yaml").data_seed
    block.transforms = []
    datamodule = instantiate(block, _recursive_=False)  # as nequip-train does
    datamodule.setup("fit")
    datamodule.setup("test")
    return {
        name: [frame_source(split, i)[1] for split in splits for i in range(len(split))]
        for name, splits in (("train", datamodule.train_dataset),
                             ("val", datamodule.val_dataset), ("test", datamodule.test_dataset))
    }  # fmt: skip


def test_a_bad_frame_in_the_test_split_stops_before_training(tiny_backbone, tiny_aspirin,
                                                             tmp_path):  # fmt: skip
    """A frame of the test split (which nothing trains on) with an infinite force stops the
    run before training, named by its index in its file.

    Mutation tried: ``bad = permutation[5]`` (a training frame: fails the split assertion).
    """
    # the example configs split 40 frames 28 / 4 / 8 from one seeded permutation
    permutation = torch.randperm(40, generator=torch.Generator().manual_seed(0)).tolist()
    bad = permutation[35]
    splits = nequip_splits(tiny_aspirin)
    assert bad in splits["test"] and len(splits["test"]) == 8
    assert bad not in splits["train"] + splits["val"]
    frames = ase.io.read(tiny_aspirin, index=":")
    forces = frames[bad].get_forces()
    forces[0, 1] = np.inf
    frames[bad].calc.results["forces"] = forces
    path = tmp_path / "bad_test_frame.extxyz"
    ase.io.write(path, frames)
    overrides = [*probe_overrides(tiny_backbone["ckpt"], tiny_aspirin), f"dataset_file={path}"]
    result = nequip_train("aspirin_probe.yaml", tmp_path / "run", *overrides, check=False)
    assert result.returncode != 0 and f"frame {bad} of {path}" in result.stderr
    assert not (tmp_path / "run" / "best.ckpt").exists()


def test_two_ddp_processes_give_one_process_report(probe_run, tiny_backbone, tiny_aspirin,
                                                   tmp_path):  # fmt: skip
    """A real 2-process (gloo) nequip-train run: the closed form's normal equations are joined
    across ranks before the solve, the test sums before any ratio."""
    run_dir, _ = probe_run
    ddp_dir = tmp_path / "ddp"
    result = nequip_train(
        "aspirin_probe.yaml", ddp_dir, *probe_overrides(tiny_backbone["ckpt"], tiny_aspirin),
        "++trainer.strategy=ddp", "++trainer.devices=2", "++trainer.accelerator=cpu",
    )  # fmt: skip
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr
    single = json.loads((run_dir / "spectral_report.json").read_text())
    double = json.loads((ddp_dir / "spectral_report.json").read_text())
    assert double["n_test_frames"] == single["n_test_frames"]
    assert double["bootstrap"] == single["bootstrap"]
    for l, row in single["per_l"].items():
        for key, value in row.items():
            assert double["per_l"][l][key] == pytest.approx(value, rel=1e-5, abs=1e-9), (l, key)
    for name in ("delta", "rho_diff"):
        one, two = single[name], double[name]
        assert [two["mean"], *two["ci95"], two["frac_le_0"]] == pytest.approx(
            [one["mean"], *one["ci95"], one["frac_le_0"]], rel=1e-4, abs=1e-9
        ), name
    one, two = (FrameSums.load(path) for path in (run_dir, ddp_dir))
    np.testing.assert_array_equal(one.source_index, two.source_index)
    np.testing.assert_allclose(one.head, two.head, rtol=1e-5, atol=1e-9)


def test_readout_over_the_centers_runs_end_to_end(tiny_backbone, tiny_aspirin, tmp_path):
    run_dir = tmp_path / "centers"
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)
    nequip_train("aspirin_probe.yaml", run_dir, *overrides, "spectral_probe.readout=centers")
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert all(math.isfinite(row["rho"]) for row in report["per_l"].values())


def test_backbones_of_a_multirun_are_probed_in_one_run(tiny_aspirin, tmp_path):
    """The README's recipe: ``nequip-train -m seed=...`` trains the backbones, one probe run
    reads them all; level 1 of the bootstrap resamples them."""
    sweep = tmp_path / "backbones"
    train_tiny_backbone(tmp_path, tiny_aspirin, "-m", "seed=1,2", f"hydra.sweep.dir={sweep}")
    backbones = sorted(str(path) for path in sweep.glob("*/best.ckpt"))
    assert len(backbones) == 2
    run_dir = tmp_path / "probe"
    nequip_train("aspirin_probe.yaml", run_dir, *probe_overrides(",".join(backbones), tiny_aspirin))
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert report["n_backbones"] == 2
    assert [b["path"] for b in report["per_backbone"]] == backbones
    rho = np.array([[row["rho"] for row in b["per_l"].values()] for b in report["per_backbone"]])
    assert not np.allclose(rho[0], rho[1])  # two seeds, two backbones
    assert [row["rho"] for row in report["per_l"].values()] == pytest.approx(rho.mean(0))
    low, high = report["delta"]["ci95"]
    assert low <= high


def test_a_clear_injected_signal_is_recovered_below_the_ceiling_and_not_above(
    tiny_backbone, tiny_aspirin, tmp_path
):
    """Even a one-epoch tiny backbone's features carry an injected force field of degree
    l <= d_r L = 4 (``target: injected``: the heads fit the signal alone), and nothing above."""
    run_dir = tmp_path / "clear"
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)[:2]
    overrides += ["spectral_probe.l_values=[1,2,4,5,6]", "spectral_probe.target=injected"]
    nequip_train("aspirin_probe.yaml", run_dir, *overrides)
    report = json.loads((run_dir / "spectral_report.json").read_text())
    for l in ("1", "2", "4"):
        row = report["per_l"][l]
        assert row["rho_forces"] > 0.1 and row["rho_forces_ci95"][0] > 0, (l, row)
    for l in ("5", "6"):
        assert abs(report["per_l"][l]["rho_forces"]) < 0.03, (l, report["per_l"][l])
    assert report["delta"]["frac_le_0"] == 0.0


def test_an_rmd17_run_is_evaluated_on_its_own_frames_and_on_another_file(
    tiny_backbone, tiny_aspirin, tmp_path
):
    """``data=rmd17`` (NequIP's rMD17DataModule, an npz in kcal/mol read without
    downloading) end to end, then evaluated with and without ``--dataset-file``."""
    npz = write_rmd17_npz(ase.io.read(tiny_aspirin, index=":"), tmp_path / "source")
    run_dir = tmp_path / "rmd17"
    nequip_train(
        "aspirin_probe.yaml", run_dir, "data=rmd17", f"data_source_dir={tmp_path / 'source'}",
        "data.subset_len=40", "data.train_val_test_split=[28,4,8]",
        *probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)[1:],
    )  # fmt: skip
    trained = json.loads((run_dir / "spectral_report.json").read_text())
    assert trained["n_test_frames"] == 8
    assert set(FrameSums.load(run_dir).source_file) == {str(npz)}

    same, other = tmp_path / "same", tmp_path / "other"
    subprocess.run(["nequip-spectral-evaluate", str(run_dir), "--output", str(same)], check=True)
    evaluated = json.loads((same / "spectral_report.json").read_text())
    assert evaluated["per_l"]["4"]["rho"] == pytest.approx(trained["per_l"]["4"]["rho"], rel=1e-5)
    subprocess.run(["nequip-spectral-evaluate", str(run_dir), "--dataset-file", str(tiny_aspirin),
                    "--output", str(other)], check=True)  # fmt: skip
    report = json.loads((other / "spectral_report.json").read_text())
    assert report["n_test_frames"] == 40
    assert all(row["rho"] is not None for row in report["per_l"].values())


def test_an_allegro_backbone_is_probed_layer_by_layer_and_evaluated_end_to_end(
    tiny_allegro, tiny_aspirin, tmp_path
):
    """Every layer of Allegro's tensor track (two) from one run of its package: the report's
    top level is the last layer's, each layer has its report (passing the schema), the table
    shows them, the loggers get them, and evaluate rebuilds them."""
    run_dir = tmp_path / "allegro"
    result = nequip_train("aspirin_probe.yaml", run_dir, "spectral_probe.feature_tap=layers",
                          *probe_overrides(tiny_allegro["package"], tiny_aspirin))  # fmt: skip
    report = json.loads((run_dir / "spectral_report.json").read_text())
    assert report["L"] == 2 and report["boundary"] == 4
    assert report["solver"]["mixed_irreps"]  # the closed form's features of the tensor track
    assert all(row["rho"] is not None for row in report["per_l"].values())
    taps = [layer["tap"] for layer in report["layers"]]
    assert taps == ["allegro.tps.0", "allegro.tps.1"] and report_schema_errors(report) == []
    assert {k: v for k, v in report.items() if k != "layers"} == report["layers"][-1]["report"]
    assert all(f"  {tap}" in result.stdout for tap in taps), result.stdout[-3000:]
    logged = (run_dir / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "spectral/allegro.tps.0/rho_recovered_forces/l4" in logged
    output = tmp_path / "evaluated"
    subprocess.run(["nequip-spectral-evaluate", str(run_dir), "--output", str(output)], check=True)
    evaluated = json.loads((output / "spectral_report.json").read_text())
    assert evaluated["per_l"]["4"]["rho"] == pytest.approx(report["per_l"]["4"]["rho"], rel=1e-5)
    first = evaluated["layers"][0]["report"]["per_l"]["4"]["rho"]
    assert first == pytest.approx(report["layers"][0]["report"]["per_l"]["4"]["rho"], rel=1e-5)


def test_the_controls_run_as_multiruns_of_the_probe_config(tiny_backbone, tiny_aspirin,
                                                           tmp_path):  # fmt: skip
    """The degree control (``-m spectral_probe.degree=1,3``): the ceiling moves from 2 to 6;
    a clear injected signal is recovered at l = 2 with d_r = 1, at l = 3 (above d_r = 1's
    ceiling) with d_r = 3, and never above the ceiling."""
    sweep = tmp_path / "degree"
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)[:2]
    nequip_train("aspirin_probe.yaml", tmp_path, *overrides, "-m", "spectral_probe.degree=1,3",
                 "spectral_probe.l_values=[1,2,3,6,7]", "spectral_probe.target=injected",
                 f"hydra.sweep.dir={sweep}")  # fmt: skip
    for job, degree, recovered, above in ((0, 1, "2", ("3", "6", "7")), (1, 3, "3", ("7",))):
        report = json.loads((sweep / str(job) / "spectral_report.json").read_text())
        assert report["degree"] == degree and report["boundary"] == 2 * degree
        assert report["per_l"][recovered]["rho_forces"] > 0.05
        for l in above:
            assert abs(report["per_l"][l]["rho_forces"]) < 0.03, (degree, l, report["per_l"][l])


def test_the_shuffled_direction_null_recovers_nothing(tiny_backbone, tiny_aspirin, tmp_path):
    """The SPN reads a direction unrelated to the injected one: no l is recovered, not even
    below the ceiling (the same signal is recovered with ``random``, see above)."""
    run_dir = tmp_path / "shuffled"
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)[:2]
    overrides += ["spectral_probe.l_values=[1,2,4,5]", "spectral_probe.target=injected"]
    overrides.append("spectral_probe.marked_direction=shuffled")
    nequip_train("aspirin_probe.yaml", run_dir, *overrides)
    report = json.loads((run_dir / "spectral_report.json").read_text())
    for l, row in report["per_l"].items():
        assert abs(row["rho_forces"]) < 0.05, (l, row)


def test_the_capacity_and_activation_controls_run_as_multiruns(tiny_backbone, tiny_aspirin,
                                                               tmp_path):  # fmt: skip
    """The capacity control (``-m spectral_probe.feature_budget=...``) gives more features a
    head, the activation control (``solver=sgd -m activation=null,gate``) more parameters;
    neither recovers anything above the ceiling."""
    overrides = probe_overrides(tiny_backbone["ckpt"], tiny_aspirin)
    overrides += ["spectral_probe.l_values=[2,5]", "spectral_probe.target=injected", "-m"]
    sweeps = {
        "capacity": ["spectral_probe.feature_budget=20,200"],
        "activation": ["solver=sgd", "spectral_probe.activation=null,gate"],
    }
    reports = {}
    for name, control in sweeps.items():
        sweep = tmp_path / name
        nequip_train("aspirin_probe.yaml", tmp_path, *overrides, *control,
                     f"hydra.sweep.dir={sweep}")  # fmt: skip
        reports[name] = [json.loads((sweep / str(job) / "spectral_report.json").read_text())
                         for job in (0, 1)]  # fmt: skip
        assert reports[name][0]["head_parameters"] < reports[name][1]["head_parameters"], name
        for report in reports[name]:
            assert abs(report["per_l"]["5"]["rho_forces"]) < 0.03, (name, report["per_l"]["5"])
    assert [r["activation"] for r in reports["activation"]] == [None, "gate"]


def test_the_untrained_backbone_recipe_keeps_the_initial_weights(tiny_aspirin, tmp_path):
    """``training_module.optimizer.lr=0 max_epochs=1`` (the README's untrained backbone): the
    weights of one epoch at learning rate 0 equal those of two, and differ from one trained
    epoch of the same seed."""

    def weights(name, *overrides):
        checkpoint = torch.load(train_tiny_backbone(tmp_path / name, tiny_aspirin, *overrides),
                                map_location="cpu", weights_only=False)  # fmt: skip
        state = checkpoint["state_dict"]
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    untrained = weights("untrained", "training_module.optimizer.lr=0")
    longer = weights("longer", "training_module.optimizer.lr=0", "max_epochs=2")
    trained = weights("trained")
    assert untrained.keys() == longer.keys() == trained.keys() and len(untrained) > 10
    assert all(torch.equal(untrained[k], longer[k]) for k in untrained)
    assert any(not torch.equal(untrained[k], trained[k]) for k in untrained)

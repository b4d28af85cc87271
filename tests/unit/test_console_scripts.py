"""Every console script of ``setup.cfg``: installed as declared, ``--help`` exits 0 and shows
every flag with its help text, and each script that needs no trained backbone runs once on
tiny inputs and writes what it says. (``nequip-spectral-report``, ``-compare`` and
``-evaluate`` run on a tiny probe run in ``tests/integration/test_train.py``; ``-demo``,
``-benchmark`` and ``-make-aspirin`` are too slow to run here: ``--help`` only.)

The scripts are run through their installed entry points (``importlib.metadata``), in this
process (each ``--help`` as a subprocess would import torch and NequIP again, seconds each);
``nequip-spectral-span`` also runs as a subprocess, the installed command itself.
"""

import argparse
import configparser
import importlib.metadata
import pathlib
import shutil
import subprocess

import ase.io
import numpy as np
import pytest

from nequip_spectral.data import BUNDLED_ASPIRIN

SETUP_CFG = pathlib.Path(__file__).parents[2] / "setup.cfg"


def declared_scripts() -> dict:
    """``{command: "module:function"}`` of ``setup.cfg``'s ``console_scripts``."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


SCRIPTS = declared_scripts()

# flags declared without ``help=`` (the scripts are not this test's to edit): each entry
# is an expected failure of test_every_flag_has_a_help_text, strict, so that adding the help
# texts (an unexpected pass) asks for the entry to go


def main_of(command: str):
    """The function the installed command runs, from its installed entry point."""
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name=command)
    assert entry.value == SCRIPTS[command], "reinstall: pip install -e ."
    return entry.load()


class _Parsed(Exception):
    """Raised in place of parsing the command line: the parser is built, nothing has run."""


def parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a command builds (caught where it would parse the arguments)."""
    built = []

    def capture(self, args=None, namespace=None):
        built.append(self)
        raise _Parsed

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
        with pytest.raises(_Parsed):
            main_of(command)([])
    return built[-1]


def flags(parser: argparse.ArgumentParser) -> list:
    """Every argument but ``--help``, with the names it goes by in the help text."""
    return [
        (action, action.option_strings or [action.metavar or action.dest])
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)
    ]


def test_every_declared_script_is_installed():
    assert len(SCRIPTS) >= 10
    for command in SCRIPTS:
        assert shutil.which(command), f"{command} not on PATH: reinstall (pip install -e .)"
        assert callable(main_of(command))


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_help_exits_0_and_shows_every_flag(command, capsys, monkeypatch):
    """``--help`` exits 0 and lists every flag, each with its help text where it has one.

    Every optional flag with a default says it. Mutations tried: ``--help`` of
    ``nequip-spectral-compare`` with ``--labels`` hidden (``help=argparse.SUPPRESS``): fails;
    ``command_parser`` without ``DefaultsShown``: fails for ``preview --frames``.
    """
    with pytest.raises(SystemExit) as exit:
        main_of(command)(["--help"])
    assert exit.value.code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith("usage: ")
    assert "``" not in text  # plain text, not the docstring's markup
    parser = parser_of(command, monkeypatch)
    assert flags(parser), command
    squeezed = "".join(text.split())  # help texts are wrapped to the terminal's width
    formatter = parser._get_formatter()
    for action, names in flags(parser):
        for name in names:
            assert name in text, (command, name)
        if action.help:
            assert "".join(formatter._expand_help(action).split()) in squeezed, (command, names)
        if action.option_strings and all(action.default is not v
                                         for v in (None, False, argparse.SUPPRESS)):
            assert "default" in formatter._expand_help(action), (command, names)  # shown


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_every_flag_has_a_help_text(command, monkeypatch):
    """Every ``add_argument`` of every script has ``help=``.

    Mutation tried: ``help=`` removed from ``--frames`` of ``_parser`` in make_data.py: fails
    for the three make scripts.
    """
    parser = parser_of(command, monkeypatch)
    lacking = [names[0] for action, names in flags(parser) if not action.help]
    assert lacking == [], f"{command}: flags without help=: {lacking}"


def test_span_prints_the_ceiling_of_every_L_and_degree():
    """The installed command, as a subprocess: one row per ``(L, d)``, the ceiling ``d L``,
    the span measured at ``d L`` equal to its closed-form dimension and nothing above."""
    result = subprocess.run(["nequip-spectral-span", "--L", "1", "2", "--degree", "1", "2"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for L, d, ceiling, dim, rank, _, at_ceiling, measured, above, measured_above in rows:
        assert int(ceiling) == int(L) * int(d) and int(rank) == int(dim)
        assert float(measured) == pytest.approx(int(at_ceiling), abs=0.05)
        assert int(above) == 0 and float(measured_above) < 0.05


def test_preview_prints_the_injected_size_of_every_l(capsys):
    main_of("nequip-spectral-preview")(
        [str(BUNDLED_ASPIRIN), "--frames", "4", "--l-values", "0", "3", "--amplitude", "0.1"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("4 frames; data: energy std ") and "amplitude 0.1," in lines[0]
    assert lines[1].split() == ["l", "E_inj", "mean", "E_inj", "std", "F_inj", "RMS", "F_inj/F"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["0", "3"]
    for row in rows:
        mean, std, force_rms, ratio = map(float, row[1:])
        assert np.isfinite(mean) and std > 0 and force_rms > 0 and ratio > 0


def test_preview_takes_a_one_element_system_with_a_center_fraction(tmp_path, capsys):
    """Cu centers and Cu neighbors: refused without ``--center-fraction`` (in one line naming
    the flag), previewed with it, odd ``l`` included."""
    from nequip_spectral.generators.materials import generate_material

    path = tmp_path / "cu.extxyz"
    ase.io.write(path, generate_material("Cu", 3, size=2, equilibration_steps=20))
    preview = main_of("nequip-spectral-preview")
    one_element = [str(path), "--l-values", "1", "2", "--centers", "Cu", "--neighbors", "Cu"]
    with pytest.raises(SystemExit):
        preview(one_element)
    error = capsys.readouterr().err
    assert "--neighbors: ['Cu'] also appear in centers" in error and "--center-fraction" in error
    assert "spectral_probe." not in error and "Traceback" not in error
    preview([*one_element, "--center-fraction", "0.5"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(row[3]) > 0 for row in rows)  # the injected forces, odd l too


def test_preview_reference_gives_the_force_at_the_sites(tmp_path, capsys):
    """``--reference``: the injected force's power with the atoms at the reference sites, the
    same centers and direction, over the frames'. Against the first frame itself (an atom moved
    by a lattice vector, so its own seed would draw another direction), 1 at every ``l``;
    against the perfect Cu3Au crystal (every Au a center), 0 at even ``l`` (each Cu's
    Au neighbors, and each Au's shell, are centrosymmetric) and not 0 at odd ``l``. A
    reference with other atoms is refused, naming the file.

    Mutation tried: the reference's own centers and direction, not the frame's (fails).
    """
    from nequip_spectral.generators.materials import generate_material, material_supercell

    frames = generate_material("Cu3Au", 2, size=1, equilibration_steps=20, stride=5)
    data, itself, crystal = (tmp_path / name for name in ("a.extxyz", "b.extxyz", "c.extxyz"))
    ase.io.write(data, frames[:1])
    moved = frames[0].copy()
    moved.positions[1] += moved.cell[0]
    ase.io.write(itself, moved)
    ase.io.write(crystal, material_supercell("Cu3Au", 1))
    preview = main_of("nequip-spectral-preview")
    args = [str(data), "--l-values", "1", "2", "3", "4", "--centers", "Au", "--neighbors", "Cu"]

    def shares(reference):
        preview([*args, "--reference", str(reference)])
        lines = capsys.readouterr().out.splitlines()
        assert lines[1].split()[-1] == "F_ref^2/F_inj^2"
        return [float(line.split()[-1]) for line in lines[2:]]

    assert shares(itself) == pytest.approx([1.0] * 4, abs=1e-3)  # (printed to 3 decimals)
    odd_1, even_2, odd_3, even_4 = shares(crystal)
    assert even_2 == even_4 == 0 and odd_1 > 0.1 and odd_3 > 0.1
    other = tmp_path / "cu.extxyz"
    ase.io.write(other, material_supercell("Cu", 1))
    with pytest.raises(SystemExit):
        preview([*args, "--reference", str(other)])
    assert f"--reference {other}" in capsys.readouterr().err


def test_make_c5_writes_the_frames_it_says_and_refuses_an_existing_file(tmp_path, capsys):
    output = tmp_path / "c5.extxyz"
    make_c5 = main_of("nequip-spectral-make-c5")
    make_c5(["--frames", "3", "--radial", "0.05", "--output", str(output)])
    assert capsys.readouterr().out.startswith(f"wrote 3 frames of CH5 (6 atoms) to {output}")
    frames = ase.io.read(output, index=":")
    assert len(frames) == 3
    for atoms in frames:
        assert np.isfinite(atoms.get_potential_energy())
        assert atoms.get_forces().shape == (len(atoms), 3)
    assert not np.allclose(frames[0].positions, frames[1].positions)  # distorted
    written = output.read_bytes()
    with pytest.raises(SystemExit) as exit:
        make_c5(["--frames", "3", "--output", str(output)])
    assert exit.value.code != 0 and "exists" in capsys.readouterr().err
    assert output.read_bytes() == written


def test_make_material_writes_periodic_frames(tmp_path, capsys):
    """...and says what it wrote: frames, formula, atoms, cell, file."""
    output = tmp_path / "cu.extxyz"
    main_of("nequip-spectral-make-material")(
        ["--material", "Cu", "--size", "1", "--frames", "2", "--stride", "1",
         "--equilibration", "2", "--output", str(output)]
    )  # fmt: skip
    said = capsys.readouterr().out
    assert said.startswith(f"wrote 2 frames of Cu4 (4 atoms, periodic cell 3.59 x 3.59 x 3.59 A) "
                           f"to {output}")  # fmt: skip
    frames = ase.io.read(output, index=":")
    assert len(frames) == 2
    for atoms in frames:
        assert atoms.get_chemical_formula() == "Cu4" and atoms.pbc.all()
        assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (4, 3)


def test_evaluate_names_a_backbone_run_and_species_the_probe_does_not_know(tmp_path, capsys):
    """``nequip-spectral-evaluate`` on a backbone's run directory, or with a dataset of other
    species, stops in one line that says what is wrong and what to give instead."""
    from omegaconf import OmegaConf

    from nequip_spectral.generators.materials import generate_material

    evaluate = main_of("nequip-spectral-evaluate")
    runs = {}
    for name, config in {
        "probe": {"spectral_probe": {"backbones": ["b.ckpt"]},
                  "training_module": {"model": {"type_names": ["C", "H", "O"]}}},
        "backbone": {"training_module": {"model": {"type_names": ["C", "H", "O"]}}},
    }.items():  # fmt: skip
        runs[name] = tmp_path / name
        (runs[name] / ".hydra").mkdir(parents=True)
        OmegaConf.save(config, runs[name] / ".hydra" / "config.yaml")
        (runs[name] / "best.ckpt").write_bytes(b"")
    cu = tmp_path / "cu.extxyz"
    ase.io.write(cu, generate_material("Cu", 1, size=1, equilibration_steps=2))
    with pytest.raises(SystemExit):
        evaluate([str(runs["backbone"])])
    assert "is not a spectral probe run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate([str(runs["probe"]), "--dataset-file", str(cu)])
    error = capsys.readouterr().err
    assert "['Cu'] not among the probe's type names ['C', 'H', 'O']" in error
    assert not list(runs["probe"].glob("evaluate-*"))  # nothing left behind


def test_the_demo_runs_its_two_stages_and_ends_with_the_table(tmp_path, capsys, monkeypatch):
    """The demo's two ``nequip-train`` calls (run here by a stand-in that writes a report),
    the closed form given no epoch count (it is one epoch), and the table printed last."""
    from helpers import as_frames, known_readings

    from nequip_spectral.report import build_report, write_report
    from nequip_spectral.scripts import demo

    calls = []

    def stand_in(command, env=None):
        calls.append(command)
        if "aspirin_probe.yaml" in command:
            rho = np.array([[0.9, 0.8, 0.7, 0.0]])
            report = build_report(as_frames(*known_readings(rho, rho), [0, 3, 4, 5], ("forces",)))
            write_report(report, tmp_path / "demo" / "probe")
        return 0

    monkeypatch.setattr(demo.subprocess, "call", stand_in)
    demo.main(["--output", str(tmp_path / "demo"), "--backbone-epochs", "1"])
    backbone, probe = calls
    assert "max_epochs=1" in backbone and not any(a.startswith("max_epochs") for a in probe)
    assert "1/2 training the example NequIP backbone (l_max = 2) for 1 epoch\n" in (
        out := capsys.readouterr().out)
    assert out.rstrip().splitlines()[-1].startswith("     the null head")  # the key's last line

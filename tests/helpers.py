"""What the tests share beside their fixtures (``conftest.py``): running ``nequip-train`` on the
example configs, tiny backbones, aspirin batches, synthetic per-frame sums and linear systems."""

import os
import pathlib
import subprocess

import numpy as np
import torch
from e3nn import o3
from nequip.data import AtomicDataDict
from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

from nequip_spectral.data import SpectralInjection, frames_from_ase
from nequip_spectral.model import FrozenBackboneSPN
from nequip_spectral.theory.ridge import LeastSquaresData

CONFIGS = pathlib.Path(__file__).parents[1] / "example_configs"
TYPE_NAMES = ["C", "H", "O"]


def nequip_train(config: str, run_dir, *overrides, check: bool = True):
    """Run ``nequip-train`` on an example config; return the completed process."""

    flags = [o for o in overrides if o.startswith("-")]  # e.g. -m: before any override
    overrides = [o for o in overrides if not o.startswith("-")]
    command = ["nequip-train", *flags, "-cp", str(CONFIGS), "-cn", config]
    result = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}", *overrides],
        capture_output=True, text=True, env={**os.environ},
    )  # fmt: skip
    if check and result.returncode != 0:
        raise RuntimeError(f"nequip-train failed:\n{result.stderr[-4000:]}")
    return result


def train_tiny_backbone(run_dir, dataset, *overrides, architecture="nequip") -> str:
    """A tiny backbone (4 features, 2 layers) trained for one epoch; its best.ckpt."""
    nequip_train(
        "aspirin_backbone.yaml",
        run_dir,
        f"dataset_file={dataset}",
        f"backbone_model={architecture}",
        "max_epochs=1",
        "num_features=4",
        "++training_module.model.num_layers=2",
        "run=[train]",
        *overrides,
    )
    return str(run_dir / "best.ckpt")


def float64_backbone(run_dir, dataset, architecture, *overrides) -> dict:
    """A tiny backbone in float64, as .ckpt and .nequip.zip."""

    checkpoint = train_tiny_backbone(
        run_dir, dataset, "training_module.model.model_dtype=float64", *overrides,
        architecture=architecture,
    )  # fmt: skip
    package = run_dir / "backbone.nequip.zip"
    subprocess.run(
        ["nequip-package", "build", checkpoint, str(package)], check=True, capture_output=True
    )
    return {"ckpt": checkpoint, "package": str(package)}


def write_rmd17_npz(atoms_list, source_dir):
    """Frames as an rMD17 file (kcal/mol) under ``source_dir``, where rMD17DataModule reads it."""

    kcalmol_to_ev = 0.0433641
    path = source_dir / "rmd17" / "npz_data" / "rmd17_aspirin.npz"
    path.parent.mkdir(parents=True)
    np.savez(
        path,
        nuclear_charges=atoms_list[0].numbers,
        coords=np.stack([atoms.positions for atoms in atoms_list]),
        energies=np.array([atoms.get_potential_energy() for atoms in atoms_list]) / kcalmol_to_ev,
        forces=np.stack([atoms.get_forces() for atoms in atoms_list]) / kcalmol_to_ev,
    )
    return path


def irreps_up_to(L: int, channels: int = 2) -> o3.Irreps:
    return o3.Irreps([(channels, (l, p)) for l in range(L + 1) for p in (1, -1)])


def aspirin_frames(atoms_list, probe):
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(
            model_type_names=TYPE_NAMES,
            chemical_species_to_atom_type_map={s: s for s in TYPE_NAMES},
        ),
        NeighborListTransform(r_max=5.0),
        SpectralInjection(probe),
    ]
    return frames_from_ase(atoms_list, transforms)


def aspirin_batch(atoms_list, probe):
    return AtomicDataDict.batched_from_list(aspirin_frames(atoms_list, probe))


def build(probe, **kwargs):
    return FrozenBackboneSPN(
        seed=0, model_dtype="float64", type_names=TYPE_NAMES, r_max=5.0, probe=probe, **kwargs
    )


def as_frames(head, control, l_values, kinds=("forces", "energy"), L=2, degree=2):
    """The per-frame sums of a synthetic test set, as the report reads them (backbones of
    features up to ``L``, heads of degree ``degree``: the ceiling ``degree * L``)."""
    import dataclasses

    from nequip_spectral.config import SpectralProbeConfig
    from nequip_spectral.report.frames import FrameSums

    backbones = tuple(f"b{b}.ckpt" for b in range(head.shape[0]))
    probe = SpectralProbeConfig(backbones=backbones, l_values=tuple(l_values), degree=degree)
    num_frames = head.shape[1]
    context = {
        "probe": dataclasses.asdict(probe), "L": L, "kinds": list(kinds), "head_parameters": 1,
        "solver": {}, "n_bootstrap": 50, "block_length": None,
    }  # fmt: skip
    order = np.arange(num_frames)
    return FrameSums(head, control, np.array(["f"] * num_frames), order, order, context)


def known_readings(rho, recovered, num_frames=4):
    """Per-frame sums (one kind) whose heads read exactly ``rho`` and ``rho_recovered``: every
    frame has unit injected power of zero mean, a control with zero gain, the gain ``rho``
    and ``sum aa = 1 - recovered``.

    Args:
        rho, recovered: ``(backbones, heads)``

    Returns:
        ``(head, control)``: ``(backbones, num_frames, 1, heads, 6)`` and ``(.., 1, 3)``
    """
    rho, recovered = np.asarray(rho, dtype=float), np.asarray(recovered, dtype=float)
    head = np.zeros((rho.shape[0], num_frames, 1, rho.shape[1], 6))
    head[..., 0] = head[..., 4] = 1.0  # n, ee (e = 0: the variance is the power)
    head[..., 1] = rho[:, None, None]  # tt (rr = 0): the gain
    head[..., 5] = 1.0 - recovered[:, None, None]  # aa
    control = np.zeros((rho.shape[0], num_frames, 1, 3))
    control[..., 0] = 1.0
    return head, control


def split_into_folds(data, folds) -> list:
    """``data``'s energy rows as folds (:class:`LeastSquaresData` each): ``folds[i]`` is frame
    ``i``'s fold."""
    parts = []
    for fold in range(int(folds.max()) + 1):
        mine = folds == fold
        part = LeastSquaresData.empty(data.energy_rows.shape[1], data.energy_types.shape[1],
                                      data.energy_targets.shape[1], with_forces=False)  # fmt: skip
        part.add_energies(data.energy_rows[mine], data.energy_types[mine],
                          data.energy_targets[mine])  # fmt: skip
        parts.append(part)
    return parts


def random_system(frames, num_features=12, num_heads=3, force_rows=0, seed=0):
    """A random linear problem: one truth for every ``seed``, samples and noise of its own."""
    truth = torch.Generator().manual_seed(123)
    energy_truth = torch.randn(4, num_heads, generator=truth, dtype=torch.float64)
    force_truth = torch.randn(4, num_heads, generator=truth, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    data = LeastSquaresData.empty(num_features, 2, num_heads)
    rows = randn(frames, num_features) * torch.logspace(-1, 1, num_features, dtype=torch.float64)
    types = torch.rand(frames, 2, generator=generator, dtype=torch.float64)
    data.add_energies(rows, types, rows[:, :4] @ energy_truth + 0.3 * randn(frames, num_heads))
    if force_rows:
        rows = randn(force_rows, num_features)
        targets = rows[:, 2:6] @ force_truth + 0.3 * randn(force_rows, num_heads)
        data.add_forces(rows, targets, force_rows)
    return data


def closed_form_report(model, train, validation, test, n_bootstrap=200, batch_size=50) -> dict:
    """A probe's heads solved in closed form in-process (on ``train`` and ``validation``, in
    folds of consecutive frames) and the report of the ``test`` frames, as a run's test stage
    builds it (frames in the order given, as one trajectory).

    Args:
        model: a :class:`~nequip_spectral.nn.SpectralProbeModel` (``build(...).model``)
        train, validation, test: lists of frames (``aspirin_frames``)
    """
    from nequip_spectral.report import batch_frame_sums, build_report
    from nequip_spectral.report.frames import FrameSums
    from nequip_spectral.solvers.closed_form import collect, solve_heads
    from nequip_spectral.train.report_writer import report_context

    solve_heads(model, collect(model, [train, validation], batch_size, "cpu"), 1.0, 1.0)
    heads, controls = [], []
    for start in range(0, len(test), batch_size):
        batch = AtomicDataDict.batched_from_list(test[start : start + batch_size])
        head, control = batch_frame_sums(model(batch), batch, model.probe, model.slots,
                                         model.kinds)  # fmt: skip
        heads.append(head.numpy())
        controls.append(control.numpy())
    atoms = [len(frame[AtomicDataDict.POSITIONS_KEY]) for frame in test]
    order = np.arange(len(test))
    frames = FrameSums(np.concatenate(heads, 1), np.concatenate(controls, 1),
                       np.array(["test"] * len(test)), order, order,
                       report_context(model, atoms, n_bootstrap, None))  # fmt: skip
    return build_report(frames)


def perturb_backbone(backbone, seed: int, scale: float = 0.05) -> None:
    """Add seeded noise to every floating-point weight of a frozen backbone, in place: the
    same architecture with other weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in backbone.model.parameters():
            if parameter.is_floating_point():
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.add_(scale * noise.to(parameter.dtype))


def file_rendezvous(directory) -> str:
    """A ``torch.distributed`` ``init_method`` through a new file under ``directory`` (no TCP
    port to pick, so no port another process could take between picking and binding)."""
    path = pathlib.Path(directory) / "rendezvous"
    assert not path.exists(), f"{path}: a file rendezvous needs a new file"
    return path.resolve().as_uri()


def report_schema_errors(report: dict) -> list:
    """Where a report (as read back from ``spectral_report.json``) departs from its JSON
    schema, ``nequip_spectral/report/schema.json`` (draft 2020-12): ``"path: message"`` each."""
    import importlib.resources
    import json

    import jsonschema

    text = importlib.resources.files("nequip_spectral.report").joinpath("schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(report)]


def assert_forces_equal_finite_differences(energy_of, atoms, analytic, h=1e-5, rtol=1e-6):
    """``analytic`` (``(..., atoms, 3)``) equals ``-dE/dr`` by central differences of
    ``energy_of(atoms)`` (a tensor ``(...)``) for every atom and axis of the ASE ``atoms``."""
    for atom in range(len(atoms)):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            numeric = -(energy_of(plus) - energy_of(minus)) / (2 * h)
            assert torch.allclose(
                analytic[..., atom, axis], numeric, rtol=rtol, atol=rtol * analytic.abs().max()
            ), (atom, axis)

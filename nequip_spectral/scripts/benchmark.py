"""``nequip-spectral-benchmark``: what a spectrum costs next to training its backbone.

Side by side in one run, on the bundled aspirin data with the example architecture (NequIP
``l_max = 2``, 16 features, 3 layers; weights do not change the cost), on one device (``cuda``
when there is one, else the CPU), each configuration in its own process: a backbone training
step (energies and forces) on the same device sets the unit, one backbone-training epoch of the
example split (1,050 frames). Then the total cost of each spectrum with each solver, in those
epochs: ``sgd`` (the example's 10 epochs: the first, then nine with the per-frame cache) and
``closed_form`` (one pass over the 1,050 training and 150 validation frames, timed on a few of
them, then the solve, timed at full size), for energies and forces and for energies alone, and
the cost of each extra ``l``. Prints peak memory too.
"""

import multiprocessing
import resource
import sys
import time
from typing import NamedTuple

import ase.io
import torch

from .. import _keys  # noqa: F401  (registers the fields before the data is read)
from ..data import BUNDLED_ASPIRIN, SpectralInjection, frames_from_ase
from . import command_parser

TYPE_NAMES = ["C", "H", "O"]
ALLOY_TYPES, ALLOY_PROBE = ["Au", "Cu"], {"centers": ["Au"], "neighbors": ["Cu"]}  # --cells
CELL_SIZES = {32: 2, 192: (4, 4, 3)}  # atoms: Cu3Au supercell repeats
EPOCH_FRAMES = 1050  # the example configs' training split of the bundled file
VALIDATION_FRAMES = 150
SGD_EPOCHS = 10  # the example probe config's max_epochs


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _batches(l_values, batch_size, count):
    from nequip.data import AtomicDataDict
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    transforms = [
        ChemicalSpeciesToAtomTypeMapper(
            model_type_names=TYPE_NAMES,
            chemical_species_to_atom_type_map={s: s for s in TYPE_NAMES},
        ),
        NeighborListTransform(r_max=5.0),
        SpectralInjection({"l_values": l_values}, r_max=5.0),
    ]
    atoms = ase.io.read(BUNDLED_ASPIRIN, index=f":{batch_size * count}")
    frames = frames_from_ase(atoms, transforms)
    return [
        AtomicDataDict.batched_from_list(frames[i : i + batch_size])
        for i in range(0, len(frames), batch_size)
    ]


def _cell_batches(atoms: int, count: int):
    """``count`` single-frame batches of a Cu3Au cell of ``atoms`` atoms, rattled, EMT labels."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from nequip.data import AtomicDataDict
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    from ..generators.materials import material_supercell

    names = ALLOY_TYPES
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(
            model_type_names=names, chemical_species_to_atom_type_map={s: s for s in names}
        ),
        NeighborListTransform(r_max=5.0),
        SpectralInjection({"l_values": list(range(8)), **ALLOY_PROBE}, r_max=5.0),
    ]
    cells = []
    for seed in range(count):
        cell = material_supercell("Cu3Au", CELL_SIZES[atoms])
        cell.rattle(0.05, seed=seed)
        cell.calc = EMT()
        cell.calc = SinglePointCalculator(cell, energy=cell.get_potential_energy(),
                                          forces=cell.get_forces())  # fmt: skip
        cells.append(cell)
    return [AtomicDataDict.batched_from_list([f]) for f in frames_from_ase(cells, transforms)]


class Setup(NamedTuple):
    """How a child process builds and runs its models."""

    threads: int
    device: str
    jvp: str  # auto | loop | batched
    backbone: str  # example, or a NequIP preset: S, M, L, XL
    feature_tap: str = "auto"  # or layers


def _backbone(backbone: str, type_names=TYPE_NAMES):
    """The example architecture (NequIP ``l_max = 2``, 16 features, 3 layers), or NequIP's
    preset of that name (its foundation models' shapes: ``PresetNequIPGNNModel``)."""
    from nequip.model import NequIPGNNModel, PresetNequIPGNNModel

    common = {
        "seed": 0, "model_dtype": "float32", "type_names": type_names, "r_max": 5.0,
        "avg_num_neighbors": 18.0, "per_type_energy_shifts": {s: -51.0 for s in type_names},
        "per_type_energy_scales": {s: 1.0 for s in type_names},
    }  # fmt: skip
    if backbone != "example":
        return PresetNequIPGNNModel(preset=backbone, **common)
    return NequIPGNNModel(l_max=2, num_layers=3, num_features=16, radial_mlp_depth=1,
                          radial_mlp_width=32, **common)  # fmt: skip


def _probe(l_values, force_spectrum, solver, setup, directions="auto", alloy=False):
    from nequip.utils import torch_default_dtype

    from ..model import freeze_and_tap
    from ..nn import SpectralProbeModel

    probe = {"backbones": ["in-process"], "l_values": l_values, "solver": solver,
             "force_spectrum": force_spectrum, "force_directions": directions}  # fmt: skip
    type_names = TYPE_NAMES
    if alloy:
        type_names = ALLOY_TYPES
        probe.update(ALLOY_PROBE)
    with torch_default_dtype(torch.float32):
        torch.manual_seed(0)
        backbone = freeze_and_tap(_backbone(setup.backbone, type_names), setup.feature_tap)
        model = SpectralProbeModel([backbone], probe, type_names)
    model.batched_jvp = {"auto": None, "loop": False, "batched": True}[setup.jvp]
    return model, probe


def _peak_mb(start_rss, device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_rss


def _child(setup: Setup):
    """A child's set-up (a spawned process starts bare): NequIP's state, threads, the clock."""
    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(setup.threads)
    device = torch.device(setup.device)

    def clock():  # seconds, once the device has finished what it was given
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    return device, clock, _rss_mb()


def _to(batch, device):
    from nequip.data import AtomicDataDict

    return AtomicDataDict.to_(dict(batch), device)


def _train_steps(name, l_values, force_spectrum, batches, warmup, setup, queue):
    """Run in a child: seconds per training step, first epoch and later (cached) epochs."""
    from nequip.train import EnergyForceLoss

    from ..train import SpectralProbeLoss

    device, clock, start_rss = _child(setup)
    if name == "backbone":
        model = _backbone(setup.backbone)
        loss = EnergyForceLoss(type_names=TYPE_NAMES)
    else:
        model, probe = _probe(l_values, force_spectrum, "sgd", setup)
        loss = SpectralProbeLoss(probe, type_names=TYPE_NAMES)
    model.to(device).train()
    batches = [_to(batch, device) for batch in batches]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    passes = 1 if name == "backbone" else 2  # the probe caches per-frame results
    seconds = {0: [], 1: []}
    for repeat in range(passes):
        for i, batch in enumerate(batches):
            begin = clock()
            optimizer.zero_grad()
            loss(model(batch), batch)["weighted_sum"].backward()
            optimizer.step()
            if repeat > 0 or i >= warmup:
                seconds[repeat].append(clock() - begin)
    step = {repeat: sum(t) / len(t) for repeat, t in seconds.items() if t}
    peak = _peak_mb(start_rss, device)
    queue.put({"first": step[0], "later": step.get(1, step[0]), "peak_mb": peak})


def _closed_form(l_values, force_spectrum, directions, batches, warmup, setup, queue,
                 alloy=False):  # fmt: skip
    """Run in a child: seconds per frame of the closed-form pass, and of the solve (aspirin;
    with ``alloy``, the pass alone)."""
    from ..solvers.closed_form import add_least_squares, empty_folds, solve_heads

    device, clock, start_rss = _child(setup)
    model, _ = _probe(l_values, force_spectrum, "closed_form", setup, directions, alloy)
    model.to(device)
    batches = [_to(batch, device) for batch in batches]
    num_folds = model.probe.ridge_folds
    systems = empty_folds(model)
    frames, seconds, dealt = 0, 0.0, 0
    for i, batch in enumerate(batches):  # frames dealt to the folds in turn
        size = len(batch["num_atoms"])
        folds = (dealt + torch.arange(size, device=device)) % num_folds
        dealt += size
        begin = clock()
        add_least_squares(model, batch, systems, folds)
        if i >= warmup:
            seconds += clock() - begin
            frames += size
    if alloy:
        queue.put({"per_frame": seconds / frames, "peak_mb": _peak_mb(start_rss, device)})
        return
    for per_backbone in systems.values():  # the solve at full size: as many energy rows
        for data in per_backbone[0]:
            size = EPOCH_FRAMES // num_folds
            repeats = -(-size // data.num_frames)
            for name in ("energy_rows", "energy_types", "energy_targets"):
                setattr(data, name, getattr(data, name).repeat(repeats, 1)[:size])
    begin = clock()
    solve_heads(model, systems, 1.0, 1.0)
    solve = clock() - begin
    peak = _peak_mb(start_rss, device)
    queue.put({"per_frame": seconds / frames, "solve": solve, "peak_mb": peak,
               "features": model.num_features(),
               "features_per_tap": [model.num_features(t) for t in range(model.num_taps)]})


def _closed_form_seconds(result: dict) -> float:
    """A closed-form run's whole cost from a :func:`_closed_form` child's timings: the pass over
    the example's training and validation frames, then the solve."""
    return result["per_frame"] * (EPOCH_FRAMES + VALIDATION_FRAMES) + result["solve"]


def main(argv=None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=5, help="frames a batch (default: 5)")
    parser.add_argument("--steps", type=int, default=8,
                        help="timed batches per configuration (default: 8)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (default: 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where it all runs (default: cuda when there is one, else cpu)")
    parser.add_argument("--cells", action="store_true",
                        help="instead: what a frame's force rows cost on Cu3Au cells of 32 and "
                        "192 atoms, every component against force_directions auto")  # fmt: skip
    parser.add_argument("--backbone", choices=["example", "S", "M", "L", "XL"], default="example",
                        help="the example architecture, or a NequIP preset (its foundation "
                        "models' shapes: PresetNequIPGNNModel)")  # fmt: skip
    parser.add_argument("--presets", nargs="+", choices=["example", "S", "M", "L", "XL"],
                        help="instead: the closed form's cost on each of these backbones, "
                        "both spectra and the energy spectrum, l 0..7 (no sgd)")  # fmt: skip
    parser.add_argument("--layers", action="store_true",
                        help="instead: the closed form on every layer (feature_tap: layers) "
                        "against the last layer alone (auto), on --backbone")  # fmt: skip
    parser.add_argument("--energy-only", action="store_true",
                        help="with --layers: the energy spectrum alone (a preset's force "
                        "spectrum solves for tens of minutes a tap on a CPU)")  # fmt: skip
    parser.add_argument("--jvp", choices=["auto", "loop", "batched"], default="auto",
                        help="Jacobian-vector products one direction at a time (loop), in vmapped "
                        "chunks (batched), or by device (auto: loop on the CPU; default)")
    args = parser.parse_args(argv)

    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(args.threads)
    few, many = list(range(8)), list(range(13))
    warmup = 1
    batches = _batches(many, args.batch_size, args.steps + warmup)
    context = multiprocessing.get_context("spawn")  # (CUDA cannot start again in a fork)
    queue = context.Queue()

    def in_child(target, *target_args, **target_kwargs):  # one at a time: each has the machine
        process = context.Process(target=target, args=(*target_args, queue), kwargs=target_kwargs)
        process.start()
        process.join()
        if process.exitcode != 0:
            sys.exit(f"benchmark: {target.__name__} failed")
        return queue.get()

    setup = Setup(args.threads, args.device, args.jvp, args.backbone)

    def steps(name, ls, forces):
        return in_child(_train_steps, name, ls, forces, batches, warmup, setup)

    def closed(ls, forces, directions="auto"):
        return in_child(_closed_form, ls, forces, directions, batches, warmup, setup)

    if args.cells:
        _cells(args, setup, in_child)
        return
    if args.presets:
        _presets(args, batches, warmup, in_child)
        return
    if args.layers:
        _layers(args, batches, warmup, in_child)
        return
    backbone = steps("backbone", few, True)
    epoch = backbone["first"] * EPOCH_FRAMES / args.batch_size  # seconds, the unit
    rows = []
    for forces, label in ((True, "energies + forces"), (False, "energies alone")):
        sgd = steps("sgd", few, forces)
        steps_per_epoch = EPOCH_FRAMES / args.batch_size
        sgd_total = (sgd["first"] + (SGD_EPOCHS - 1) * sgd["later"]) * steps_per_epoch
        name = f"sgd, {SGD_EPOCHS} epochs, l 0..{few[-1]}, {label}"
        rows.append((name, sgd_total, sgd["peak_mb"], None))
        runs = [(few, "auto"), (many, "auto")] + [(few, 16)] * forces  # (sketched: 16)
        for ls, directions in runs:
            result = closed(ls, forces, directions)
            total = _closed_form_seconds(result)
            sketch = f", {directions} directions" if directions != "auto" else ""
            name = f"closed form, l 0..{ls[-1]}, {label}{sketch}"
            rows.append((name, total, result["peak_mb"], result))
    print(
        f"{args.device}, jvp {args.jvp}, backbone {args.backbone}: {args.batch_size} frames a "
        f"batch, {args.steps} timed "
        f"batches, {args.threads} thread(s);"
        f" a backbone-training epoch = {EPOCH_FRAMES} frames = {epoch:.1f} s "
        f"(peak {backbone['peak_mb']:.0f} MB)"
    )
    print(f"{'spectrum':<60} {'seconds':>8} {'backbone epochs':>16} {'peak MB':>8}")
    for name, seconds, peak, _ in rows:
        print(f"{name:<60} {seconds:>8.1f} {seconds / epoch:>16.2f} {peak:>8.0f}")
    by_name = {name: (seconds, result) for name, seconds, _, result in rows}
    ef, ef_many = (by_name[f"closed form, l 0..{ls[-1]}, energies + forces"] for ls in (few, many))
    e = by_name[f"closed form, l 0..{few[-1]}, energies alone"]
    print(
        f"closed form: {ef[1]['features']} features a head; collect "
        f"{1000 * ef[1]['per_frame']:.0f} ms/frame (E+F), {1000 * e[1]['per_frame']:.1f} "
        f"ms/frame (E); solve {ef[1]['solve']:.1f} s (E+F), {e[1]['solve']:.1f} s (E)"
    )
    per_l = (ef_many[0] / ef[0] - 1) / (len(many) - len(few))
    print("targets:")
    print(f"  both spectra (closed form, E+F) <= 10 backbone epochs: {ef[0] / epoch:.2f}")
    print(f"  energy spectrum alone <= 0.3 backbone epochs: {e[0] / epoch:.2f}")
    print(f"  each extra l <= 5% more (l 0..7 -> 0..12, E+F): {100 * per_l:.1f}%")


def _presets(args, batches, warmup, in_child) -> None:
    """``--presets``: per backbone, the closed form's pass (ms a frame) and solve (at full
    size) for both spectra and for the energy spectrum, l 0..7, in backbone-training epochs of
    the same backbone on the same device."""
    print(f"{args.device}, jvp {args.jvp}: {args.batch_size} frames a batch, {args.steps} timed "
          f"batches, {args.threads} thread(s); closed form, l 0..7, aspirin (21 atoms), "
          f"{EPOCH_FRAMES} + {VALIDATION_FRAMES} fitting frames")  # fmt: skip
    print(f"{'backbone':>8} {'features':>8} {'epoch s':>8} {'E+F ms/frame':>13} {'solve s':>8} "
          f"{'epochs':>7} {'E ms/frame':>11} {'solve s':>8} {'epochs':>7} {'peak MB':>8}")
    for backbone in args.presets:
        setup = Setup(args.threads, args.device, args.jvp, backbone)
        train = in_child(_train_steps, "backbone", list(range(8)), True, batches, warmup, setup)
        epoch = train["first"] * EPOCH_FRAMES / args.batch_size
        cells = []
        for forces in (True, False):
            result = in_child(_closed_form, list(range(8)), forces, "auto", batches, warmup,
                              setup)  # fmt: skip
            total = _closed_form_seconds(result)
            cells.append((result, total / epoch))
        (both, both_epochs), (energy, energy_epochs) = cells
        peak = max(train["peak_mb"], both["peak_mb"], energy["peak_mb"])
        print(f"{backbone:>8} {both['features']:>8} {epoch:>8.1f} "
              f"{1000 * both['per_frame']:>13.0f} {both['solve']:>8.1f} {both_epochs:>7.2f} "
              f"{1000 * energy['per_frame']:>11.1f} {energy['solve']:>8.1f} {energy_epochs:>7.2f} "
              f"{peak:>8.0f}")  # fmt: skip


def _layers(args, batches, warmup, in_child) -> None:
    """``--layers``: the closed form's pass and solve (l 0..7, at full size) with every layer
    tapped against the last alone, for the energy spectrum and for both spectra."""
    print(f"{args.device}, jvp {args.jvp}, backbone {args.backbone}: {args.batch_size} frames "
          f"a batch, {args.steps} timed batches, {args.threads} thread(s); closed form, l 0..7, "
          f"{EPOCH_FRAMES} + {VALIDATION_FRAMES} fitting frames")  # fmt: skip
    print(f"{'spectra':>8} {'feature_tap':>11} {'features a head':>22} {'ms/frame':>9} "
          f"{'solve s':>8} {'total s':>8} {'peak MB':>8}")  # fmt: skip
    spectra = ((False, "E", 1.5), (True, "E+F", 2.0))
    for forces, label, target in spectra[: 1 if args.energy_only else 2]:
        totals = {}
        for tap in ("auto", "layers"):
            setup = Setup(args.threads, args.device, args.jvp, args.backbone, tap)
            result = in_child(_closed_form, list(range(8)), forces, "auto", batches, warmup,
                              setup)  # fmt: skip
            totals[tap] = _closed_form_seconds(result)
            features = " + ".join(map(str, result["features_per_tap"]))
            print(f"{label:>8} {tap:>11} {features:>22} {1000 * result['per_frame']:>9.1f} "
                  f"{result['solve']:>8.1f} {totals[tap]:>8.1f} {result['peak_mb']:>8.0f}")
        print(f"  every layer against the last alone ({label}), <= {target}x: "
              f"{totals['layers'] / totals['auto']:.2f}x")


def _cells(args, setup, in_child) -> None:
    """``--cells``: ms per frame of the closed-form pass (both spectra, l 0..7), on periodic
    cells of 32 and 192 atoms, with every force component and with ``auto``."""
    from ..config import SpectralProbeConfig

    print(f"{args.device}, jvp {args.jvp}: Cu3Au cells, {args.steps} timed frames each, "
          f"{args.threads} thread(s); closed-form pass, both spectra, l 0..7")  # fmt: skip
    print(f"{'atoms':>6} {'force_directions':>17} {'rows':>5} {'ms/frame':>9} {'peak MB':>8}")
    per_frame = {}
    for atoms in CELL_SIZES:
        batches = _cell_batches(atoms, args.steps + 1)
        for setting in ("all", "auto"):
            rows = SpectralProbeConfig.from_block({"force_directions": setting}).force_rows(atoms)
            if setting == "auto" and rows == 3 * atoms:  # auto is every component here
                per_frame[atoms, setting] = per_frame[atoms, "all"]
                continue
            result = in_child(_closed_form, list(range(8)), True, setting, batches, 1, setup,
                              alloy=True)  # fmt: skip
            per_frame[atoms, setting] = result["per_frame"]
            print(f"{atoms:>6} {setting:>17} {rows:>5} {1000 * result['per_frame']:>9.0f} "
                  f"{result['peak_mb']:>8.0f}")  # fmt: skip
    small, large = CELL_SIZES
    print("targets:")
    print(f"  {large} atoms against {small}, force_directions auto, <= 3x: "
          f"{per_frame[large, 'auto'] / per_frame[small, 'auto']:.2f}x "
          f"(every component: {per_frame[large, 'all'] / per_frame[small, 'all']:.2f}x)")


if __name__ == "__main__":
    main()

"""``nequip-spectral-benchmark``: what the probe costs next to training its backbone.

Side by side in one run, on the bundled aspirin data with the example architecture (NequIP
``l_max = 2``, 16 features, 3 layers; weights do not change the cost), each configuration in
its own forked process on the same batches: a backbone training step (energies and forces),
the probe with all heads fitting energies and forces, the same probe as separate per-``l``
runs (the naive design), and the energy-only fast path (first epoch, later epochs). Prints
milliseconds per training step, seconds per epoch of the example split, peak memory above
the process's start, the ratios and the issue's targets.
"""

import argparse
import contextlib
import multiprocessing
import resource
import sys
import time

import ase.io
import torch

from .._keys import MAX_PROBE_L  # noqa: F401  (registers the fields before the data is read)
from ..data import BUNDLED_ASPIRIN, SpectralInjection, frames_from_ase
from ..nn.probe import _ForcesThroughBackbone

TYPE_NAMES = ["C", "H", "O"]
EPOCH_FRAMES = 1050  # the example configs' training split of the bundled file


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


def _backbone():
    from nequip.model import NequIPGNNModel

    return NequIPGNNModel(
        seed=0,
        model_dtype="float32",
        type_names=TYPE_NAMES,
        r_max=5.0,
        l_max=2,
        num_layers=3,
        num_features=16,
        radial_mlp_depth=1,
        radial_mlp_width=32,
        avg_num_neighbors=18.0,
        per_type_energy_shifts={s: -51.0 for s in TYPE_NAMES},
        per_type_energy_scales={s: 1.0 for s in TYPE_NAMES},
    )


def _probe(l_values, fit_forces):
    from nequip.utils import torch_default_dtype

    from ..model import freeze_and_tap
    from ..nn import SpectralProbeModel

    with torch_default_dtype(torch.float32):
        torch.manual_seed(0)
        probe = {"backbones": ["in-process"], "l_values": l_values}
        model = SpectralProbeModel([freeze_and_tap(_backbone())], probe, TYPE_NAMES, fit_forces)
    return model, probe


def _measure(name, l_values, fit_forces, batches, warmup, threads, queue):
    """Run in a child: time training steps over ``batches`` (twice for the energy-only path)."""
    from nequip.train import EnergyForceLoss

    from ..train import SpectralProbeMetrics

    torch.set_num_threads(threads)
    start_rss = _rss_mb()
    if name == "backbone":
        model = _backbone()
        loss = EnergyForceLoss(type_names=TYPE_NAMES)
    else:
        model, probe = _probe(l_values, fit_forces)
        coeff = 1.0 if fit_forces else 0.0
        loss = SpectralProbeMetrics(probe, forces_coeff=coeff, type_names=TYPE_NAMES)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch):
        optimizer.zero_grad()
        loss(model(batch), batch)["weighted_sum"].backward()
        optimizer.step()

    passes = 1 if name == "backbone" else 2  # the probe caches per-frame results
    seconds = []
    for repeat in range(passes):
        for i, batch in enumerate(batches):
            begin = time.perf_counter()
            step(batch)
            if repeat > 0 or i >= warmup:
                seconds.append((repeat, time.perf_counter() - begin))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start_rss
    result = {"peak_mb": peak}
    for repeat in range(passes):
        times = [s for r, s in seconds if r == repeat]
        result[f"pass{repeat}"] = sum(times) / len(times)
    if not fit_forces:
        frames = sum(len(b["num_atoms"]) for b in batches)
        result["cache_mb"] = model.cache_bytes / frames * EPOCH_FRAMES / 2**20
    queue.put(result)


def _breakdown(batches, warmup, threads, queue):
    """Run in a child: where an energy+force step of the all-heads probe spends its time."""
    from e3nn import o3
    from nequip.data import AtomicDataDict

    torch.set_num_threads(threads)
    model, _ = _probe(list(range(8)), True)
    backbone, heads = model.backbones[0], model.heads[0]
    seconds = {}

    @contextlib.contextmanager
    def timed(name, counted):
        begin = time.perf_counter()
        yield
        if counted:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - begin

    for i, batch in enumerate(batches):
        counted = i >= warmup
        pos = batch[AtomicDataDict.POSITIONS_KEY].detach().requires_grad_()
        with timed("features", counted):
            tapped = backbone.tap({**batch, AtomicDataDict.POSITIONS_KEY: pos})
            features = tapped[AtomicDataDict.NODE_FEATURES_KEY]
        head_grads = torch.randn(heads.num_heads, *features.shape, requires_grad=True)
        with timed("forces", counted):
            forces = _ForcesThroughBackbone.apply(head_grads, features, pos)
        with timed("backward", counted):
            torch.autograd.grad(forces, head_grads, torch.randn_like(forces))
        n = torch.nn.functional.normalize(torch.randn(len(pos), 3, dtype=features.dtype), dim=1)
        harmonics = o3.spherical_harmonics(heads.irreps_harmonics, n, normalize=True)
        copies = features.detach().expand(heads.num_heads, -1, -1).clone().requires_grad_()
        with timed("heads", counted):
            heads(copies, harmonics).sum().backward()
    steps = len(batches) - warmup
    queue.put({name: total / steps for name, total in seconds.items()})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from nequip.utils.global_state import set_global_state

    set_global_state()
    torch.set_num_threads(args.threads)
    l_values = list(range(8))
    warmup = 2
    batches = _batches(l_values, args.batch_size, args.steps + warmup)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    configs = [
        ("backbone", l_values, True),
        ("all heads E+F", l_values, True),
        ("one l + control E+F", [4], True),
        ("all heads energy-only", l_values, False),
    ]

    def in_child(target, *target_args):  # one at a time: each has the machine to itself
        process = context.Process(target=target, args=(*target_args, queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            sys.exit(f"benchmark: {target.__name__} failed")
        return queue.get()

    results = {
        name: in_child(_measure, name, ls, fit_forces, batches, warmup, args.threads)
        for name, ls, fit_forces in configs
    }
    breakdown = in_child(_breakdown, batches, warmup, args.threads)

    steps_per_epoch = EPOCH_FRAMES / args.batch_size
    reference = results["backbone"]["pass0"]
    memory = results["backbone"]["peak_mb"]
    all_heads, one_l = results["all heads E+F"], results["one l + control E+F"]
    energy_only = results["all heads energy-only"]
    rows = [
        ("backbone training, energies + forces", reference, memory),
        ("probe, all heads (l 0..7 + control), E+F, first epoch", all_heads["pass0"],
         all_heads["peak_mb"]),
        ("  later epochs", all_heads["pass1"], all_heads["peak_mb"]),
        ("probe as 8 separate per-l runs, E+F, first epoch", 8 * one_l["pass0"],
         one_l["peak_mb"]),
        ("  later epochs", 8 * one_l["pass1"], one_l["peak_mb"]),
        ("probe energy-only, first epoch", energy_only["pass0"], energy_only["peak_mb"]),
        ("  later epochs", energy_only["pass1"], energy_only["peak_mb"]),
    ]  # fmt: skip
    print(
        f"{args.batch_size} frames a step, {args.steps} timed steps, {args.threads} thread(s); "
        f"an epoch = {EPOCH_FRAMES} frames"
    )
    print(f"{'configuration':<54} {'ms/step':>8} {'s/epoch':>8} {'x backbone':>10} {'peak MB':>8}")
    for name, seconds, peak in rows:
        print(
            f"{name:<54} {1000 * seconds:>8.0f} {seconds * steps_per_epoch:>8.1f} "
            f"{seconds / reference:>10.2f} {peak:>8.0f}"
        )
    cache = energy_only["cache_mb"]
    print(f"cache of the energy-only path (features, energies) for {EPOCH_FRAMES} frames: "
          f"{cache:.1f} MB")  # fmt: skip
    ratios = [
        ("all heads E+F <= 2.5x backbone", all_heads["pass1"] / reference),
        ("per-l runs >= 3x slower than all heads", one_l["pass1"] * 8 / all_heads["pass1"]),
        ("energy-only later epochs <= 0.2x backbone", energy_only["pass1"] / reference),
        ("peak memory <= 2x backbone training", max(r[2] for r in rows[1:]) / memory),
    ]
    print("targets (later epochs):")
    for target, ratio in ratios:
        print(f"  {target}: {ratio:.2f}x")

    ms = {name: 1000 * value for name, value in breakdown.items()}
    passes = ms["features"] + ms["forces"] + ms["backward"]
    print("where an all-heads E+F step goes (ms, one step):")
    print(f"  backbone features (forward, kept for the forces)         {ms['features']:6.1f}")
    print(f"  9 heads' forces -J^T g_h (9 vector-Jacobian products)     {ms['forces']:6.1f}")
    print(f"  their backward J r_h (J^T u with its graph + 9 JVPs)      {ms['backward']:6.1f}")
    print(f"  all 9 heads, forward + backward (energy path)            {ms['heads']:6.1f}")
    print(
        f"  backbone passes of the step: {passes:.0f} ms = {passes / (1000 * reference):.2f}x "
        "a backbone-training step"
    )


if __name__ == "__main__":
    main()

"""The closed-form solver: its features, its ridge solution, and the heads it loads."""


import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from e3nn import o3
from helpers import (
    TYPE_NAMES,
    aspirin_batch,
    aspirin_frames,
    build,
    file_rendezvous,
    irreps_up_to,
    random_system,
)
from nequip.data import AtomicDataDict

from nequip_spectral.config import SpectralProbeError
from nequip_spectral.heads import ENERGY_FIT, FORCE_FIT
from nequip_spectral.nn import SPNHeads
from nequip_spectral.nn.polynomial import PolynomialFeatures
from nequip_spectral.solvers import closed_form
from nequip_spectral.solvers.closed_form import (
    ClosedFormFit,
    collect,
    fit_closed_form,
    solve_heads,
)
from nequip_spectral.theory.ridge import (
    ALPHAS,
    LeastSquaresData,
    sketch_directions,
    solve_ridge,
)
from nequip_spectral.train import SpectralProbeLoss


@pytest.mark.parametrize("L, degree", [(1, 1), (2, 1), (1, 2), (2, 2), (1, 3), (2, 3)])
def test_features_span_every_sgd_head(L, degree):
    """The closed form optimizes over a superset of the gradient-descent heads' class."""
    torch.manual_seed(L + 10 * degree)
    irreps = irreps_up_to(L)
    head = SPNHeads(irreps, 1, degree, channels=2)
    features = PolynomialFeatures(irreps, degree, feature_budget=10**6)
    x = irreps.randn(4000, -1)
    n = torch.nn.functional.normalize(torch.randn(4000, 3), dim=1)
    harmonics = o3.spherical_harmonics(head.irreps_harmonics, n, True)
    target = head(x, harmonics)[0]
    phi = features(x, harmonics)
    fit = torch.linalg.lstsq(phi, target[:, None], driver="gelsd").solution[:, 0]
    assert (phi @ fit - target).norm() < 1e-10 * target.norm()


def test_feature_count_and_the_mix_to_the_budget():
    irreps = o3.Irreps("16x0e+16x1e+16x1o+16x2e+16x2o")  # NequIP's tap at l_max 2
    full = PolynomialFeatures(irreps, 2, feature_budget=8000)
    # 3 x 16 linear; 11 coupling paths between two blocks (256 pairs each), 11 of a block
    # with itself (136 pairs u <= v each)
    assert full.num_features == 48 + 11 * 256 + 11 * 136 and not full.mixed
    mixed = PolynomialFeatures(irreps, 3, feature_budget=8000)
    assert mixed.mixed and mixed.num_features <= 8000
    assert PolynomialFeatures(irreps, 3, 8000, seed=1).mix_0.shape == mixed.mix_0.shape
    with pytest.raises(ValueError, match=r"spectral_probe\.feature_budget"):
        PolynomialFeatures(irreps, 2, feature_budget=10)


def penalized_problem(data, alpha, energy_coeff, forces_coeff):
    """The loss as an explicit least-squares system: rows, targets (intercept partialled out)."""
    projector = torch.eye(data.num_frames, dtype=torch.float64) - data.energy_types @ (
        torch.linalg.pinv(data.energy_types)
    )
    energy = (energy_coeff / data.num_frames) ** 0.5
    rows = [energy * projector @ data.energy_rows]
    targets = [energy * projector @ data.energy_targets]
    if forces_coeff:
        force = forces_coeff / float(data.force_components)
        # force rows from their normal equations: G = R^T R with R = G^(1/2)
        values, vectors = torch.linalg.eigh(data.force_gram)
        root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
        rows.append(force**0.5 * root)
        targets.append(force**0.5 * torch.linalg.pinv(root) @ data.force_moment)
    rows, targets = torch.cat(rows), torch.cat(targets)
    scale = rows.square().sum(0).sqrt()
    penalty = torch.diag(scale) * alpha**0.5
    return rows, targets, penalty


@pytest.mark.parametrize("frames, force_rows", [(40, 0), (8, 0), (20, 60)])
def test_solution_is_the_ridge_argmin(frames, force_rows):
    """Brute-force lstsq of the penalized system, and a zero gradient, at the chosen alpha;
    fewer frames than features (8 < 12) goes through the dual and must agree."""
    folds = [random_system(frames, force_rows=force_rows, seed=s) for s in range(3)]
    coeffs = (1.0, 1.0 if force_rows else 0.0)
    solution = solve_ridge(folds, *coeffs)
    rows, targets, penalty = penalized_problem(LeastSquaresData.joined(folds), 1.0, *coeffs)
    for h, alpha in enumerate(solution.alpha):
        if alpha == np.inf:  # the head with no feature weight
            assert (solution.weights[:, h] == 0).all()
            continue
        system = torch.cat([rows, penalty * alpha**0.5])
        rhs = torch.cat([targets[:, h], torch.zeros(len(penalty), dtype=torch.float64)])
        brute = torch.linalg.lstsq(system, rhs[:, None], driver="gelsd").solution[:, 0]
        weights = solution.weights[:, h]
        assert torch.allclose(weights, brute, rtol=1e-8, atol=1e-10)
        gradient = system.T @ (system @ weights - rhs)
        assert gradient.abs().max() < 1e-10 * (system.T @ rhs).abs().max()
    if frames > 12:  # well posed: the held-out folds choose inside the grid
        assert not solution.at_edge.any()
    pooled = solution.fold_loss.mean(0)  # (folds of equal size)
    kept = np.isfinite(solution.alpha)  # (the others: no feature weight helped on every fold)
    assert kept.any()
    chosen = [list(ALPHAS).index(alpha) for alpha in solution.alpha[kept]]
    assert (pooled.argmin(0)[kept] == chosen).all()


def test_all_heads_at_once_equal_each_head_alone():
    folds = [random_system(50, force_rows=80), random_system(30, force_rows=40, seed=1)]
    together = solve_ridge(folds, 1.0, 0.5)
    for h in range(3):

        def alone(data, h=h):  # the targets of head h only
            return data.with_targets(torch.eye(3, dtype=torch.float64)[:, h : h + 1])

        single = solve_ridge([alone(fold) for fold in folds], 1.0, 0.5)
        assert single.alpha[0] == together.alpha[h]
        assert torch.allclose(single.weights[:, 0], together.weights[:, h], rtol=1e-10)
        assert torch.allclose(single.intercepts[:, 0], together.intercepts[:, h], rtol=1e-10)


def test_a_feature_at_round_off_level_is_left_out():
    """A feature that symmetry makes zero is round-off noise; scaled to a unit diagonal it
    would be fitted like a real one. It gets no weight, and the rest is solved as without it."""

    def with_noise_feature(data, seed):
        noisy = LeastSquaresData.empty(data.energy_rows.shape[1] + 1, 2, 3)
        noise = 1e-17 * torch.randn(data.num_frames, 1, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
        noisy.add_energies(torch.cat([data.energy_rows, noise], 1), data.energy_types,
                           data.energy_targets)  # fmt: skip
        return noisy

    train, validation = random_system(40), random_system(30, seed=1)
    clean = solve_ridge([train, validation], 1.0, 0.0)
    noisy = solve_ridge([with_noise_feature(train, 2), with_noise_feature(validation, 3)], 1.0, 0.0)
    assert (noisy.weights[-1] == 0).all()
    assert torch.allclose(noisy.weights[:-1], clean.weights, rtol=1e-10, atol=1e-12)


def test_sketch_directions_are_exact_or_unbiased():
    exact = sketch_directions(3, 100, b"frame").flatten(1)
    assert torch.equal(exact.T @ exact, torch.eye(9, dtype=torch.float64))
    one = sketch_directions(5, 4, b"a").flatten(1)  # 4 orthogonal directions of length^2 15/4
    assert torch.allclose(one @ one.T, torch.eye(4, dtype=torch.float64) * 15 / 4)
    assert torch.equal(one, sketch_directions(5, 4, b"a").flatten(1))  # a frame's own seed
    mean = sum(
        (v := sketch_directions(5, 4, bytes([i, j])).flatten(1)).T @ v
        for i in range(40) for j in range(50)
    ) / 2000  # fmt: skip
    assert torch.allclose(mean, torch.eye(15, dtype=torch.float64), atol=0.1)


@pytest.fixture(scope="module")
def solved(tiny_backbone, aspirin_atoms):
    """A closed-form probe on the tiny backbone, its data collected with every force component."""
    probe = {"backbones": [tiny_backbone["ckpt"]], "l_values": [1, 4, 5],
             "force_directions": 1000}  # fmt: skip
    model = build(probe)
    backbone = model.model.backbones[0].model
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    folds = collect(model.model, [aspirin_frames(aspirin_atoms[:8], probe)], 4, "cpu")
    for key, value in backbone.state_dict().items():  # bitwise frozen
        assert torch.equal(value, before[key]), key
    return probe, model, folds


def test_solved_heads_minimize_the_probes_own_loss(solved, aspirin_atoms):
    """At a vanishing ridge strength, the gradient of the training loss (exact forces through
    the backbone, as gradient descent sees it) vanishes at the solved weights."""
    probe, model, folds = solved
    # 8 frames in 5 folds of consecutive frames: 2, 2, 1, 2, 1 (frame i in fold 5 i // 8)
    for fit in (ENERGY_FIT, FORCE_FIT):
        assert [fold.num_frames for fold in folds[fit][0]] == [2, 2, 1, 2, 1]
    components = [float(fold.force_components) for fold in folds[FORCE_FIT][0]]
    assert components == [n * 3 * 21 for n in (2, 2, 1, 2, 1)]  # every component
    solve_heads(model.model, folds, 1.0, 1.0, alphas=[1e-10])
    loss = SpectralProbeLoss(probe, type_names=TYPE_NAMES)
    batch = aspirin_batch(aspirin_atoms[:8], probe)
    model.train()

    def gradient(weights):
        return torch.autograd.grad(loss(model(batch), batch)["weighted_sum"], weights)[0]

    for fit in (ENERGY_FIT, FORCE_FIT):
        weights = model.model.heads[fit][0].weights
        at_solution = gradient(weights)
        with torch.no_grad():
            solution = weights.clone()
            weights.zero_()
        at_zero = gradient(weights)
        with torch.no_grad():
            weights.copy_(solution)
        assert at_solution.abs().max() < 1e-6 * at_zero.abs().max(), fit


def test_same_data_gives_bitwise_the_same_heads(solved, aspirin_atoms):
    """The same frames give bitwise the same folds' data and heads; in batches of one frame
    the same folds' data (to round-off)."""
    probe, model, folds = solved
    other = build(probe)
    again = collect(other.model, [aspirin_frames(aspirin_atoms[:8], probe)], 4, "cpu")
    one_by_one = collect(other.model, [aspirin_frames(aspirin_atoms[:8], probe)], 1, "cpu")
    for fit in model.model.fits:
        for fold, fold_again, alone in zip(folds[fit][0], again[fit][0], one_by_one[fit][0],
                                           strict=True):  # fmt: skip
            for name in ("energy_rows", "energy_targets", "force_gram", "force_moment"):
                assert torch.equal(getattr(fold_again, name), getattr(fold, name)), name
                # each frame's rows in its own fold, whatever batch it came in
                assert torch.allclose(getattr(alone, name), getattr(fold, name), rtol=1e-10,
                                      atol=1e-12), name  # fmt: skip
    solve_heads(other.model, again, 1.0, 1.0)
    solve_heads(model.model, folds, 1.0, 1.0)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _ddp_worker(rank, world, init_method, parts, validation, results):
    torch.distributed.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world
    )
    joined = parts[rank].all_ranks()
    solution = solve_ridge([joined, validation], 1.0, 1.0)
    if rank == 0:
        results.put((solution.weights.numpy(), solution.intercepts.numpy()))  # not shared memory
    torch.distributed.destroy_process_group()


def test_two_ddp_processes_equal_one(tmp_path):
    parts = [random_system(25, force_rows=30, seed=s) for s in (2, 3)]
    validation = random_system(30, force_rows=30, seed=1)
    joined = LeastSquaresData.empty(12, 2, 3)
    for part in parts:
        joined.add_energies(part.energy_rows, part.energy_types, part.energy_targets)
        joined.force_gram += part.force_gram
        joined.force_moment += part.force_moment
        joined.force_targets += part.force_targets
        joined.force_components += part.force_components
    single = solve_ridge([joined, validation], 1.0, 1.0)
    results = mp.get_context("spawn").Queue()
    mp.start_processes(_ddp_worker, args=(2, file_rendezvous(tmp_path), parts, validation,
                       results), nprocs=2, start_method="spawn")  # fmt: skip
    weights, intercepts = map(torch.from_numpy, results.get(timeout=60))
    assert torch.allclose(weights, single.weights, rtol=1e-10, atol=1e-12)
    assert torch.allclose(intercepts, single.intercepts, rtol=1e-10, atol=1e-12)


def _padded_worker(rank, world, init_method, probe, atoms, results):
    from nequip.utils.global_state import set_global_state

    set_global_state()  # (a spawned process starts bare)
    torch.distributed.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world
    )
    model = build(probe).model
    frames = aspirin_frames(atoms, probe)
    fit = ClosedFormFit(model, [frames], [])
    for i in ([0, 2, 4], [1, 3, 0])[rank]:  # 5 frames on 2 ranks, as a DistributedSampler pads
        fit.add(AtomicDataDict.batched_from_list([frames[i]]), across_ranks=True)
    fit.solve(1.0, 1.0)
    if rank == 0:
        results.put({k: v.numpy() for k, v in model.state_dict().items()})
    torch.distributed.destroy_process_group()


def test_a_frame_that_two_ranks_get_counts_once(tiny_backbone, aspirin_atoms, tmp_path):
    """Lightning's distributed sampler pads the ranks' shares with repeated frames: the closed
    form's training batches count each frame once, as one process does."""
    probe = {"backbones": [tiny_backbone["ckpt"]], "l_values": [1, 4]}
    model = build(probe).model
    fit_closed_form(model, [aspirin_frames(aspirin_atoms[:5], probe)], [], 1.0, 1.0, 1, "cpu")
    results = mp.get_context("spawn").Queue()
    mp.start_processes(_padded_worker, args=(2, file_rendezvous(tmp_path), probe,
                       aspirin_atoms[:5], results), nprocs=2, start_method="spawn")  # fmt: skip
    two = results.get(timeout=60)
    for key, value in model.state_dict().items():
        assert np.allclose(two[key], value.numpy(), rtol=1e-10, atol=1e-12, equal_nan=True), key


def test_a_head_differs_from_the_control_by_the_ridge_fit_of_its_injection(solved):
    """Above the ceiling a head cannot see the injection; it must not be penalized away from
    the control's fit of the backbone's own error either (that would make rho negative). Its
    injection (l > 0) averages to zero over directions: it gets no intercept of its own."""
    _, model, folds = solved
    solve_heads(model.model, folds, 1.0, 1.0)
    heads, shifts = model.model.heads[FORCE_FIT][0], model.model.shifts[FORCE_FIT][0]
    for h, alpha in enumerate(heads.alpha[:-1].tolist()):  # every head but the control
        injected = torch.zeros(model.model.num_heads, 1, dtype=torch.float64)  # t_h - t_none
        injected[h], injected[-1] = 1.0, -1.0
        alone = solve_ridge([fold.with_targets(injected) for fold in folds[FORCE_FIT][0]],
                            1.0, 1.0, alphas=[alpha], intercept=False)  # fmt: skip
        difference = heads.weights[:, h] - heads.weights[:, -1]
        assert torch.allclose(difference, alone.weights[:, 0], rtol=1e-8, atol=1e-12)
        assert torch.equal(shifts[:, h], shifts[:, -1])


def test_the_l0_head_has_per_type_intercepts_of_its_own(tiny_backbone, aspirin_atoms):
    """``eps s_0`` does not depend on the direction: it has a mean per atom type, which the
    l = 0 head fits with intercepts of its own (the heads of l > 0 take the control's)."""
    probe = {"backbones": [tiny_backbone["ckpt"]], "l_values": [0, 1], "force_spectrum": False}
    model = build(probe).model
    solve_heads(model, collect(model, [aspirin_frames(aspirin_atoms[:10], probe)], 5, "cpu"),
                1.0, 1.0)  # fmt: skip
    shifts = model.shifts[ENERGY_FIT][0]  # (types, heads: l = 0, 1, null 1, control)
    assert (shifts[:, 0] - shifts[:, -1]).abs().max() > 1e-6
    assert torch.equal(shifts[:, 1], shifts[:, -1])


def test_a_failed_solve_keeps_the_pass_and_a_rerun_solves_from_it(
    tiny_backbone, aspirin_atoms, tmp_path, monkeypatch
):
    """The eigendecomposition failing as MKL's did on a symmetric crystal: the collected
    normal equations are saved before the error, and a rerun solves from them (no second
    pass) to the heads a run without the failure gets; other settings or frames are refused."""
    probe = {"backbones": [tiny_backbone["ckpt"]], "l_values": [1, 5]}
    saved = tmp_path / "normal_equations.pt"

    def splits(probe):
        return [[aspirin_frames(aspirin_atoms[a:b], probe)] for a, b in ((0, 6), (6, 8))]

    def fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    model = build(probe).model
    with monkeypatch.context() as patch:
        patch.setattr(closed_form, "solve_heads", fails)
        with pytest.raises(RuntimeError, match=r"normal equations are saved in .* a rerun"):
            fit_closed_form(model, *splits(probe), 1.0, 1.0, 4, "cpu", saved=saved)
    assert saved.exists()

    other = {**probe, "l_values": [1, 4]}
    with pytest.raises(SpectralProbeError, match="other spectral_probe settings"):
        fit_closed_form(build(other).model, *splits(other), 1.0, 1.0, 4, "cpu", saved=saved)
    fewer = [[aspirin_frames(aspirin_atoms[a:b], probe)] for a, b in ((0, 6), (6, 7))]
    with pytest.raises(SpectralProbeError, match="settings or frames"):  # one frame less
        fit_closed_form(model, *fewer, 1.0, 1.0, 4, "cpu", saved=saved)

    with monkeypatch.context() as patch:
        patch.setattr(closed_form, "add_least_squares",
                      lambda *args: pytest.fail("collected again"))  # fmt: skip
        fit_closed_form(model, *splits(probe), 1.0, 1.0, 4, "cpu", saved=saved)
    assert not saved.exists()  # solved: removed
    fresh = build(probe).model
    fit_closed_form(fresh, *splits(probe), 1.0, 1.0, 4, "cpu")
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)

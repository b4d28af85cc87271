import ase.io
import numpy as np
import pytest
import torch
from e3nn import o3
from helpers import (
    TYPE_NAMES,
    aspirin_batch,
    aspirin_frames,
    build,
    irreps_up_to,
    perturb_backbone,
)
from nequip.data import AtomicDataDict
from nequip.utils.test import assert_AtomicData_equivariant

from nequip_spectral._keys import backbone_energy_key, backbone_forces_key
from nequip_spectral.config import SpectralProbeError
from nequip_spectral.data import BUNDLED_ASPIRIN
from nequip_spectral.heads import CONTROL, ENERGY_FIT, FORCE_FIT, Head
from nequip_spectral.model import FrozenBackboneSPN
from nequip_spectral.nn import SPNHeads
from nequip_spectral.nn.polynomial import LinearHeads
from nequip_spectral.train import SpectralProbeLoss


@pytest.mark.parametrize(
    "L, degree, activation",
    [(1, 1, None), (1, 2, None), (1, 3, None), (2, 1, None), (2, 2, None), (2, 3, None),
     (2, 2, "gate"), (1, 3, "closed form"), (2, 2, "closed form"), (2, 3, "closed form")],
)  # fmt: skip
def test_head_has_degree_dL_in_the_direction_and_nothing_above(L, degree, activation):
    """The degree bound: as a function of n, a head is a sum of harmonics of degree <= dL
    (the gradient-descent heads, gated or not, and the closed form's, with random weights)."""
    torch.manual_seed(degree + 10 * L)
    if activation == "closed form":
        head = LinearHeads(irreps_up_to(L), 1, degree, feature_budget=10**6)
        torch.nn.init.normal_(head.weights)
    else:
        head = SPNHeads(irreps_up_to(L), 1, degree, channels=3, activation=activation)
    features = irreps_up_to(L).randn(1, -1).expand(600, -1)
    n = torch.nn.functional.normalize(torch.randn(600, 3), dim=1)
    values = head(features, o3.spherical_harmonics(head.irreps_harmonics, n, True)).squeeze(0)

    norms, scale = harmonic_norms(values, n, top=degree * L + 2)
    assert norms[degree * L] > 1e-3 * scale
    assert max(norms[degree * L + 1 :]) < 1e-9 * scale


def harmonic_norms(values, n, top: int):
    """A function of the direction ``n``, sampled as ``values``, in real harmonics up to
    ``top``: the norm of each degree's coefficients, and of all (the fit must be exact)."""
    basis = o3.spherical_harmonics(list(range(top + 1)), n, normalize=True)
    coefficients = torch.linalg.lstsq(basis, values.reshape(-1, 1)).solution.squeeze(1)
    assert torch.allclose(basis @ coefficients, values.reshape(-1), atol=1e-9)
    norms = [coefficients[lam**2 : (lam + 1) ** 2].norm() for lam in range(top + 1)]
    return norms, coefficients.norm()


@pytest.mark.parametrize("degree", [2, 3])
def test_heads_equal_the_e3nn_composition_they_replace(degree):
    """e3nn Linear mixes, "uuu" products and a FullyConnectedTensorProduct readout against
    Y(n), with the same weights, give the same head: the bilinear readout is exact."""
    torch.manual_seed(degree)
    irreps_in, C = irreps_up_to(2), 3
    heads = SPNHeads(irreps_in, 2, degree=degree, channels=C)
    h = 1  # the second head
    mixes = [o3.Linear(irreps_in, heads.irreps_mix) for _ in range(degree)]
    for mix, ours in zip(mixes, heads.mixes, strict=True):
        weights = [ours.weights[ours.paths.index((i.i_in, i.i_out))][h] for i in mix.instructions]
        mix.weight.data = torch.cat([w.flatten() for w in weights])
    # the last product z_{d-1} (x) m_d, natural-parity outputs only
    irreps_last = heads.irreps_z[-1]
    outputs = sorted(
        {ir for i1, i2, _, _ in heads.paths for ir in irreps_last[i1].ir * heads.irreps_mix[i2].ir
         if ir.p == (-1) ** ir.l}
    )  # fmt: skip
    instructions = [
        (i1, i2, outputs.index(ir), "uuu", True)
        for i1, (_, ir1) in enumerate(irreps_last)
        for i2, (_, ir2) in enumerate(heads.irreps_mix)
        for ir in ir1 * ir2
        if ir in outputs
    ]
    assert [(i1, i2) for i1, i2, *_ in instructions] == [(i1, i2) for i1, i2, _, _ in heads.paths]
    product = o3.TensorProduct(
        irreps_last, heads.irreps_mix, o3.Irreps([(C, ir) for ir in outputs]), instructions
    )
    product.weight.data = heads.path_weights[h].T.flatten()
    # the readout of every z_k and of the last product, in the heads' block order
    z_irreps = sum(heads.irreps_z, o3.Irreps()) + product.irreps_out
    readout = o3.FullyConnectedTensorProduct(z_irreps, heads.irreps_harmonics, "0e")
    offsets = np.cumsum([0, *(len(irreps) for irreps in heads.irreps_z)])
    position = {offsets[k] + i: b for b, (k, i) in enumerate(heads.linear_blocks)}
    linear = len(heads.linear_blocks)
    blocks = [position.get(ins.i_in1, linear + ins.i_in1 - offsets[-1])
              for ins in readout.instructions]  # fmt: skip
    readout.weight.data = heads.readout_weights[h][:, blocks].T.flatten()
    assert len(readout.instructions) == linear + len(outputs)

    features = irreps_in.randn(7, -1)
    n = torch.nn.functional.normalize(torch.randn(7, 3), dim=1)
    harmonics = o3.spherical_harmonics(heads.irreps_harmonics, n, True)
    m = [mix(features) for mix in mixes]
    z = [m[0]]
    for k, inner in enumerate(heads.products):  # degree 3: z_2 = z_1 (x) m_2, e3nn's own
        z.append(inner(z[-1], m[k + 1], heads.product_weights[k][h].expand(7, -1)))
    expected = readout(torch.cat([*z, product(z[-1], m[-1])], dim=-1), harmonics).squeeze(-1)
    assert torch.allclose(heads(features, harmonics)[h], expected, atol=1e-12)


def test_heads_are_independent():
    """Each head has its own weights and, given its own copy of the features, its own input."""
    torch.manual_seed(0)
    heads = SPNHeads(irreps_up_to(2), 3, degree=3, channels=2)
    n = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    harmonics = o3.spherical_harmonics(heads.irreps_harmonics, n, True)
    features = irreps_up_to(2).randn(4, -1).expand(3, -1, -1).clone().requires_grad_()
    before = heads(features, harmonics)
    (grad,) = torch.autograd.grad(before[1].sum(), features)
    assert grad[1].norm() > 0 and grad[0].norm() == 0 and grad[2].norm() == 0

    with torch.no_grad():
        for parameter in heads.parameters():  # the first dimension of every weight is the head
            parameter[0] += 1.0
    after = heads(features, harmonics)
    assert not torch.allclose(after[0], before[0])
    assert torch.equal(after[1:], before[1:])


@pytest.fixture(scope="module")
def probe(tiny_backbone):
    """Heads trained by gradient descent (random weights: every output is nonzero)."""
    return {"backbones": [tiny_backbone["ckpt"]], "l_values": [1, 4, 5], "solver": "sgd"}


@pytest.fixture(scope="module", params=["nequip", "allegro", "preset"])
def architecture(request):
    """A tiny float64 backbone of each architecture: NequIP's node features, Allegro's tensor
    track (``.ckpt`` and ``.nequip.zip``), and NequIP's foundation-model preset ``S``, probed
    from its package (the path a downloaded foundation model takes)."""
    name = {"nequip": "tiny_backbone", "allegro": "tiny_allegro", "preset": "tiny_preset"}
    files = request.getfixturevalue(name[request.param])
    preset = request.param == "preset"  # (S: l_max 1)
    layers = 2 if request.param == "allegro" else 1  # (two layers: NequIP's first reads scalars)
    return {**files, "probed": files["package" if preset else "ckpt"], "L": 1 if preset else 2,
            "layers": layers}  # fmt: skip


@pytest.fixture(scope="module")
def any_probe(architecture):
    """``probe`` on each architecture."""
    return {"backbones": [architecture["probed"]], "l_values": [1, 4, 5], "solver": "sgd"}


class TappedFeatures(torch.nn.Module):
    """A backbone's tapped features (every tap's, side by side) as a module NequIP's
    equivariance harness can test."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.irreps_in = dict(backbone.before_tap[0].irreps_in)
        irreps = sum(backbone.tap_irreps, o3.Irreps())
        self.irreps_out = {AtomicDataDict.NODE_FEATURES_KEY: irreps}

    def forward(self, data):
        features = torch.cat(self.backbone.tap(dict(data))[1], dim=-1)
        return {**data, AtomicDataDict.NODE_FEATURES_KEY: features}


@pytest.mark.parametrize("feature_tap", ["auto", "layers"])
def test_tapped_features_are_equivariant_of_degree_L(any_probe, architecture, aspirin_atoms,
                                                     feature_tap):  # fmt: skip
    from nequip_spectral.nn.tap import load_frozen_backbone

    backbone = load_frozen_backbone(any_probe["backbones"][0], feature_tap)
    assert backbone.irreps.lmax == architecture["L"]
    assert len(backbone.taps) == (1 if feature_tap == "auto" else architecture["layers"])
    data = aspirin_batch(aspirin_atoms[:1], any_probe)
    features = TappedFeatures(backbone)(dict(data))[AtomicDataDict.NODE_FEATURES_KEY]
    dim = sum(irreps.dim for irreps in backbone.tap_irreps)
    assert features.shape == (21, dim) and features.abs().max() > 0
    assert_AtomicData_equivariant(TappedFeatures(backbone), data)


def test_each_allegro_layer_from_one_pass_is_that_layer_tapped_alone(tiny_allegro, aspirin_atoms):
    """``layers`` on Allegro: every layer's summed, normalised edge tensors from one forward
    pass equal that layer's tapped as the only (last) tap.

    Mutation tried: the earlier layers left without Allegro's ``avg_num_neighbors`` factor
    (``norm * features`` -> ``features`` in ``AllegroTensorTap``): fails at layer 0."""
    import dataclasses

    from nequip_spectral.nn.tap import AllegroTensorTap, load_frozen_backbone

    backbone = load_frozen_backbone(tiny_allegro["ckpt"], "layers")
    allegro = backbone.before_tap[-1].allegro
    data = aspirin_batch(aspirin_atoms[:2], {"l_values": [1]})
    _, every = backbone.tap(dict(data))
    assert len(every) == len(allegro.tps) == 2
    for i, features in enumerate(every):
        alone = dataclasses.replace(backbone, before_tap=(*backbone.before_tap[:-1],
                                                          AllegroTensorTap(allegro, (i,))))
        torch.testing.assert_close(features, alone.tap(dict(data))[1][-1], rtol=0, atol=1e-12)
    assert not torch.allclose(every[0], every[1])


@pytest.mark.parametrize("solver", ["sgd", "closed_form"])
def test_heads_on_real_tapped_features_have_degree_dL(any_probe, architecture, aspirin_atoms,
                                                     solver):  # fmt: skip
    """The degree bound on each architecture's own tapped features, not random ones."""
    from nequip_spectral.nn.tap import load_frozen_backbone

    torch.manual_seed(3)
    backbone = load_frozen_backbone(any_probe["backbones"][0])
    data = aspirin_batch(aspirin_atoms[:1], any_probe)
    atom = backbone.tap(dict(data))[1][-1][:1].detach()
    if solver == "sgd":
        head = SPNHeads(backbone.irreps, 1, 2, channels=3).to(atom.dtype)
    else:
        head = LinearHeads(backbone.irreps, 1, 2, feature_budget=10**6).to(atom.dtype)
        torch.nn.init.normal_(head.weights)
    n = torch.nn.functional.normalize(torch.randn(400, 3, dtype=atom.dtype), dim=1)
    values = head(atom.expand(400, -1), o3.spherical_harmonics(head.irreps_harmonics, n, True))
    ceiling = 2 * architecture["L"]
    norms, scale = harmonic_norms(values, n, top=6)
    assert max(norms[ceiling + 1 :]) < 1e-9 * scale  # nothing above d_r L
    assert norms[ceiling] > 1e4 * max(norms[ceiling + 1 :])  # and something at it


def test_probe_is_invariant_and_its_forces_equivariant(any_probe, aspirin_atoms):
    model = build(any_probe)
    # NequIP's harness rotates positions and every 1o input (the marked direction) together
    assert_AtomicData_equivariant(model, aspirin_batch(aspirin_atoms[:1], any_probe))


def test_head_forces_are_exact_gradients(any_probe, aspirin_atoms):
    model = build(any_probe)
    model.eval()
    data = aspirin_batch(aspirin_atoms[:1], any_probe)
    head = Head(0, FORCE_FIT, 4)
    key = head.output_key("energy")
    forces = model(data)[head.output_key("forces")].detach()
    h = 1e-5
    for atom, axis in [(0, 0), (7, 1), (12, 2)]:
        energies = []
        for sign in (1, -1):
            moved = dict(data)
            moved["pos"] = data["pos"].clone()
            moved["pos"][atom, axis] += sign * h
            energies.append(model(moved)[key].item())
        numeric = -(energies[0] - energies[1]) / (2 * h)
        assert forces[atom, axis].item() == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_loss_gradient_of_the_heads_is_exact(any_probe, aspirin_atoms):
    """Training fits forces through the backbone by a custom backward: check it by FD."""
    model = build(any_probe)
    model.train()
    batch = aspirin_batch(aspirin_atoms[:2], any_probe)
    loss = SpectralProbeLoss(any_probe, type_names=TYPE_NAMES)

    def value():
        return loss(model(batch), batch)["weighted_sum"]

    value().backward()
    heads = model.model.heads[FORCE_FIT][0]
    for weight, index in [
        (heads.mixes[0].weights[1], (0, 3, 2)),
        (heads.readout_weights, (3, 1, 4)),
    ]:
        analytic = weight.grad[index].item()
        h = 1e-6
        weight.data[index] += h
        up = value().item()
        weight.data[index] -= 2 * h
        down = value().item()
        weight.data[index] += h
        assert analytic == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("batched", [False, True])
def test_feature_derivatives_equal_finite_differences(any_probe, aspirin_atoms, batched):
    """The closed form's force rows and the force heads' backward read the tapped features'
    Jacobian-vector products; one direction a backward pass (the CPU's default) and vmapped
    chunks of directions (elsewhere) must both be the derivative along each direction."""
    from nequip_spectral.nn import probe as probe_module
    from nequip_spectral.nn.tap import load_frozen_backbone

    backbone = load_frozen_backbone(any_probe["backbones"][0])
    data = aspirin_batch(aspirin_atoms[:2], any_probe)
    pos = data[AtomicDataDict.POSITIONS_KEY]

    def features_at(positions):
        return backbone.tap({**data, AtomicDataDict.POSITIONS_KEY: positions})[1][-1]

    tangents = torch.randn(5, *pos.shape, generator=torch.Generator().manual_seed(0),
                           dtype=pos.dtype)  # fmt: skip
    moving = pos.detach().requires_grad_()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_module, "JVP_CHUNK", 2)  # several chunks, the last one short
        derivatives = probe_module.feature_derivatives(
            features_at(moving), moving, tangents, batched=batched
        )
    h = 1e-6
    with torch.no_grad():
        for tangent, derivative in zip(tangents, derivatives, strict=True):
            numeric = (features_at(pos + h * tangent) - features_at(pos - h * tangent)) / (2 * h)
            assert torch.allclose(derivative, numeric, rtol=1e-5, atol=1e-8)


def test_backbone_frozen_and_outside_the_optimizer(any_probe, aspirin_atoms):
    model = build(any_probe)
    backbone = model.model.backbones[0].model
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone_ids = {id(p) for p in backbone.parameters()}
    assert not any(id(p) in backbone_ids for p in model.parameters())
    assert not any(p.requires_grad for p in backbone.parameters())

    loss = SpectralProbeLoss(any_probe, type_names=TYPE_NAMES)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    heads_before = [p.clone() for p in model.parameters()]
    model.train()
    assert not backbone.training
    batch = aspirin_batch(aspirin_atoms[:4], any_probe)
    for _ in range(3):
        optimizer.zero_grad()
        loss(model(batch), batch)["weighted_sum"].backward()
        optimizer.step()
    assert not backbone.training
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, model.parameters(), strict=True))
    assert "backbone" not in " ".join(model.state_dict())


def test_checkpoint_and_package_give_the_same_probe(architecture, aspirin_atoms):
    from_ckpt = {"backbones": [architecture["ckpt"]], "l_values": [2], "solver": "sgd"}
    from_package = {**from_ckpt, "backbones": [architecture["package"]]}
    batch = aspirin_batch(aspirin_atoms[:2], from_ckpt)
    a, b = build(from_ckpt)(batch), build(from_package)(batch)
    head = Head(0, FORCE_FIT, 2)
    for key in (head.output_key("energy"), head.output_key("forces"), "spn_backbone_energy_b0"):
        assert torch.allclose(a[key], b[key], atol=1e-10), key


def test_two_backbones_get_their_own_heads(tiny_backbone, aspirin_atoms):
    probe = {"backbones": [tiny_backbone["ckpt"], tiny_backbone["package"]], "l_values": [3]}
    out = build(probe)(aspirin_batch(aspirin_atoms[:2], probe))
    for fit in (ENERGY_FIT, FORCE_FIT):
        assert Head(1, fit, 3).output_key("energy") in out
        assert Head(1, fit, None, CONTROL).output_key("energy") in out


def test_each_backbones_heads_are_solved_on_and_read_its_own_features(tiny_backbone):
    """Two backbones of one architecture with different weights (the tiny backbone's
    checkpoint, and its package with its weights perturbed in-process) get different solved
    heads, and a head's outputs change when, and only when, its own backbone changes: after
    perturbing backbone 1 again, backbone 0's heads' energies and forces are bitwise the
    same and backbone 1's differ; after perturbing backbone 0, the other way round.

    Mutation tried: backbone 1 reading backbone 0's features (``backbone.tap`` ->
    ``self._backbones[0].tap`` in ``SpectralProbeModel.backbone_outputs``, nn/probe.py):
    fails, the solved heads are the same.
    """
    from nequip_spectral.solvers.closed_form import collect, solve_heads

    probe = {"backbones": [tiny_backbone["ckpt"], tiny_backbone["package"]], "l_values": [2, 4],
             "target": "injected", "force_directions": 4}  # fmt: skip
    model = build(probe)
    model.eval()
    backbones = model.model.backbones
    perturb_backbone(backbones[1], seed=1)
    frames = aspirin_frames(ase.io.read(BUNDLED_ASPIRIN, index=":16"), probe)
    folds = collect(model.model, [frames[:12], frames[12:]], 4, "cpu")
    solve_heads(model.model, folds, 1.0, 1.0, alphas=[1e-3])  # (every head reads)
    for fit, (heads_0, heads_1) in model.model.heads.items():
        assert heads_0.weights.abs().sum() > 0, fit
        assert not torch.allclose(heads_0.weights, heads_1.weights), fit

    batch = aspirin_batch(ase.io.read(BUNDLED_ASPIRIN, index="20:22"), probe)
    keys = {b: [Head(b, fit, l).output_key(kind) for l in (2, 4)
                for fit in (ENERGY_FIT, FORCE_FIT) for kind in ("energy", "forces")
                if fit == FORCE_FIT or kind == "energy"] for b in (0, 1)}  # fmt: skip

    def outputs():
        out = model(batch)
        return {key: out[key].detach().clone() for key in keys[0] + keys[1]}

    before = outputs()
    for changed, same in ((1, 0), (0, 1)):
        perturb_backbone(backbones[changed], seed=10 + changed)
        after = outputs()
        for key in keys[same]:
            assert torch.equal(after[key], before[key]), (changed, key)
        for key in keys[changed]:
            assert not torch.allclose(after[key], before[key]), (changed, key)
        before = after


@pytest.mark.parametrize(
    "change, message",
    [
        ({"backbones": ["missing.ckpt"]}, "spectral_probe.backbones: no such file"),
        ({"backbones": ["NOT_A_MODEL"]}, "spectral_probe.backbones: cannot load"),
        ({"centers": ["C", "N"]}, r"spectral_probe.centers: \['N'\] not among the type names"),
        ({"cutoff": 6.0}, r"spectral_probe.cutoff: 6.0 exceeds the model's r_max"),
        ({"feature_tap": "layer0_convnet"}, "spectral_probe.feature_tap: the input of"),
        ({"feature_tap": "nothing"}, "spectral_probe.feature_tap: no module 'nothing'"),
    ],
)
def test_bad_backbone_inputs_name_the_key(probe, tmp_path, change, message):
    if change.get("backbones") == ["NOT_A_MODEL"]:
        bad = tmp_path / "not_a_model.ckpt"
        bad.write_text("not a checkpoint")
        change = {"backbones": [str(bad)]}
    with pytest.raises(SpectralProbeError, match=message):
        build({**probe, **change})


def test_backbone_without_equivariant_features_is_refused():
    """A NequIP l_max = 0 model has only scalar node features: nothing of degree l > 0 to tap."""
    from nequip.model import NequIPGNNModel

    from nequip_spectral.nn.tap import freeze_and_tap

    scalars_only = NequIPGNNModel(
        seed=0, model_dtype="float32", type_names=TYPE_NAMES, r_max=5.0, l_max=0, num_layers=2,
        num_features=4, avg_num_neighbors=18.0, per_type_energy_shifts={s: 0.0 for s in TYPE_NAMES},
        per_type_energy_scales={s: 1.0 for s in TYPE_NAMES},
    )  # fmt: skip
    with pytest.raises(SpectralProbeError, match="no equivariant node features with l > 0"):
        freeze_and_tap(scalars_only, "auto", "scalars.ckpt")


def test_nequip_and_allegro_backbones_of_one_degree_are_probed_together(
    tiny_backbone, tiny_allegro, aspirin_atoms
):
    probe = {
        "backbones": [tiny_backbone["ckpt"], tiny_allegro["ckpt"]],
        "l_values": [4],
        "solver": "sgd",
    }  # (random head weights)
    model = build(probe)
    assert [b.irreps.lmax for b in model.model.backbones] == [2, 2]
    out = model(aspirin_batch(aspirin_atoms[:1], probe))
    for b in (0, 1):
        assert out[Head(b, FORCE_FIT, 4).output_key("forces")].abs().max() > 0


def test_energy_spectrum_alone_caches_features_and_matches_the_full_path(probe, aspirin_atoms):
    """Without the force spectrum nothing needs forces: the backbone runs once per frame."""
    full, fast = build(probe), build({**probe, "force_spectrum": False})
    fast.load_state_dict(full.state_dict(), strict=False)  # the e heads; fast has no f heads
    batch = aspirin_batch(aspirin_atoms[:3], probe)
    full.train()
    fast.train()
    reference = full(batch)
    first = fast(batch)
    assert not any(key.startswith("spn_forces") for key in first)
    energies = [k for k in first if k.startswith("spn_energy")]
    assert len(energies) == 4  # l = 1, 4, 5 and the control
    for key in energies:
        assert torch.allclose(first[key], reference[key]), key
    cache_size = fast.model.cache_bytes
    assert cache_size > 0

    # the backbone's own prediction is computed once per frame, with or without forces
    object.__setattr__(full.model.backbones[0], "energy", None)  # any call would fail
    again = full(batch)
    for key in (backbone_energy_key(0), backbone_forces_key(0)):
        assert torch.equal(again[key], reference[key]), key

    # later epochs: the backbone is not run again, and training still reaches the heads only
    backbone = fast.model.backbones[0]
    object.__setattr__(backbone, "tap", None)  # any call would fail
    loss = SpectralProbeLoss({**probe, "force_spectrum": False}, type_names=TYPE_NAMES)
    assert not any("forces" in name for name in loss.entries)
    again = fast(batch)
    loss(again, batch)["weighted_sum"].backward()
    assert all(p.grad is not None for p in fast.parameters())
    assert not any(p.grad is not None for p in backbone.model.parameters())
    key = Head(0, ENERGY_FIT, 4).output_key("energy")
    assert torch.equal(again[key], first[key])
    assert fast.model.cache_bytes == cache_size


def test_injected_target_needs_no_backbone_prediction(probe, aspirin_atoms):
    injected = {**probe, "target": "injected", "force_spectrum": False}
    model = build(injected)
    batch = aspirin_batch(aspirin_atoms[:2], injected)
    out = model.train()(batch)
    assert "spn_backbone_energy_b0" not in out and model.model.cache_bytes > 0
    loss = SpectralProbeLoss(injected, type_names=TYPE_NAMES)
    assert torch.isfinite(loss(out, batch)["weighted_sum"])


def test_residual_targets_keep_float64_at_rmd17_energy_scales(tiny_backbone, aspirin_atoms):
    """Energies near -17,600 eV (rMD17's aspirin): the targets are formed before any cast
    to the heads' float32, so they equal the same targets without the offset to 1e-9 eV."""
    probe = {"backbones": [tiny_backbone["ckpt"]], "l_values": [4]}
    per_atom = -17_600.0 / 21
    batch = aspirin_batch(aspirin_atoms[:2], probe)

    def targets(offset):
        model = FrozenBackboneSPN(seed=0, model_dtype="float32", type_names=TYPE_NAMES,
                                  r_max=5.0, probe=probe)  # fmt: skip
        scale_shift = model.model.backbones[0].from_tap[-2]  # per_type_energy_scale_shift
        with torch.no_grad():
            scale_shift.shifts += offset
        data = dict(batch)
        data["total_energy"] = batch["total_energy"] + offset * 21
        out = model(data)
        assert out[backbone_energy_key(0)].dtype == torch.float64
        return Head(0, ENERGY_FIT, 4).target(out, data, "energy", "residual")

    shifted, reference = targets(per_atom), targets(0.0)
    assert shifted.dtype == torch.float64
    assert torch.allclose(shifted, reference, rtol=0, atol=1e-9)


def test_frame_cache_keys_everything_the_backbone_reads_and_is_bounded(probe, aspirin_atoms):
    from nequip_spectral.nn.cache import FrameCache, batch_frame_keys

    batch = aspirin_batch(aspirin_atoms[:2], probe)
    keys = batch_frame_keys(batch)
    assert len(set(keys)) == 2 and keys == batch_frame_keys(dict(batch))
    for key, change in (("cell", 1.0), ("edge_cell_shift", 1.0), ("pos", 1e-9)):
        changed = dict(batch)
        changed[key] = batch[key] + change
        assert batch_frame_keys(changed)[0] != keys[0], key

    cache = FrameCache(max_bytes=21 * 3 * 8)  # room for one frame's float64 forces
    forces = torch.randn(42, 3, dtype=torch.float64)
    cache.put(keys, "forces", forces, [21, 21])
    assert cache.bytes == 21 * 3 * 8 and cache.get(keys, "forces", "cpu") is None
    assert torch.equal(cache.get(keys[:1], "forces", "cpu"), forces[:21])


def test_each_sgd_head_keeps_its_own_best_epoch(probe):
    from nequip_spectral.solvers.sgd import BestHeads

    model = build(probe).model
    loss = SpectralProbeLoss(probe, type_names=TYPE_NAMES)
    coeffs = {name: float(entry.coeff or 0.0) for name, entry in loss.entries.items()}
    best = BestHeads(model, coeffs, "val0_epoch/")

    def epoch(losses):  # every metric of head h of every set: losses[h]
        return {f"val0_epoch/{name}": losses[int(name.split("_")[2] != "l1")
                                             if "none" not in name else 2]
                for name in loss.entries}  # fmt: skip

    heads = model.heads[FORCE_FIT][0]
    first = [p.detach().clone() for p in heads.parameters()]
    best.update(epoch([1.0, 1.0, 1.0]))
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter += 1.0
    second = [p.detach().clone() for p in heads.parameters()]
    best.update(epoch([0.5, 2.0, 2.0]))  # only the head of l = 1 improves
    with torch.no_grad():
        for parameter in heads.parameters():
            parameter += 1.0
    third = [p.detach().clone() for p in heads.parameters()]
    with best.applied():
        for parameter, a, b in zip(heads.parameters(), first, second, strict=True):
            assert torch.equal(parameter[0], b[0])  # l = 1: the second epoch
            assert torch.equal(parameter[1:], a[1:])  # l = 4, 5 and the control: the first
    for parameter, c in zip(heads.parameters(), third, strict=True):  # then the current ones
        assert torch.equal(parameter, c)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_probe_and_its_report_sums_run_on_cuda(probe, aspirin_atoms):
    """Forward (head forces through the backbone), the closed-form rows and the report's
    per-frame sums on a GPU: every cache and sum comes back to the CPU."""
    from nequip_spectral.report import batch_frame_sums
    from nequip_spectral.solvers.closed_form import collect

    for solver in ("sgd", "closed_form"):
        setup = {**probe, "solver": solver}
        model = build(setup).to("cuda").eval()
        batch = {k: v.to("cuda") for k, v in aspirin_batch(aspirin_atoms[:2], setup).items()}
        out = model(batch)
        sums = batch_frame_sums(out, batch, model.model.probe, model.model.slots,
                                ("forces", "energy"))
        assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in sums)
        assert all(t.device.type == "cpu" for t in model.model._cache._values.values())
        if solver == "closed_form":
            data = collect(model.model, [aspirin_frames(aspirin_atoms[:2], setup)], 2, "cuda")
            assert all(fold.force_gram.device.type == "cpu" for fold in data[FORCE_FIT][0])


def test_backbones_that_do_not_fit_the_data_are_refused(probe):
    """The data's type names in another order, and a neighbor list shorter than the
    backbone's r_max (5.0): both stop before anything trains, naming the file."""
    with pytest.raises(SpectralProbeError, match=r"has type names \['C', 'H', 'O'\], the data"):
        FrozenBackboneSPN(seed=0, model_dtype="float64", type_names=["C", "O", "H"], r_max=5.0,
                          probe=probe)  # fmt: skip
    with pytest.raises(SpectralProbeError, match=r"has r_max 5\.0, more than the neighbor list"):
        FrozenBackboneSPN(seed=0, model_dtype="float64", type_names=TYPE_NAMES, r_max=4.5,
                          probe=probe)  # fmt: skip


def test_backbones_of_different_degree_are_refused(tiny_backbone, tiny_backbone_l1):
    probe = {"backbones": [tiny_backbone["ckpt"], tiny_backbone_l1], "l_values": [2]}
    with pytest.raises(SpectralProbeError, match="different degrees L"):
        build(probe)


def test_marked_centers_reach_the_probe_through_nequips_graph_model(tiny_backbone,
                                                                    aspirin_atoms):  # fmt: skip
    """NequIP's ``GraphModel`` passes on only the fields its model declares: with
    ``center_fraction`` and ``readout: centers`` the heads read the frame's marked centers
    through the whole model, as nequip-train calls it. (Fails without ``spectral_center`` in
    the probe's ``irreps_in``: a KeyError in the readout.)"""
    from nequip_spectral._keys import MARKED_CENTER_KEY

    probe = {"backbones": [tiny_backbone["ckpt"]], "l_values": [1], "readout": "centers",
             "center_fraction": 0.5, "force_spectrum": False}  # fmt: skip
    model = build(probe)
    assert MARKED_CENTER_KEY in model.model_input_fields
    batch = aspirin_batch(aspirin_atoms[:2], probe)
    marked = batch[MARKED_CENTER_KEY].view(-1).bool()
    out = model(batch)
    readout = model.model.read(batch, torch.float64).readout.view(-1).bool()
    assert torch.equal(readout, marked) and 0 < int(marked.sum()) < len(marked)
    assert torch.isfinite(out[Head(0, ENERGY_FIT, 1).output_key("energy")]).all()

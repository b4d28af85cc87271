"""``FrozenBackboneSPN``: the model builder that loads, freezes and taps the backbones."""

import os

from e3nn import o3
from nequip.data import AtomicDataDict
from nequip.model.utils import model_builder

from .._nequip import graph_network_modules, load_graph_model
from ..config import MODEL_ID_PREFIX, SpectralProbeConfig, SpectralProbeError
from ..nn.allegro_tap import AllegroTensorTap, is_allegro_module
from ..nn.probe import FrozenBackbone, SpectralProbeModel


def _node_feature_irreps(module):
    irreps_in = getattr(module, "irreps_in", None) or {}
    irreps = irreps_in.get(AtomicDataDict.NODE_FEATURES_KEY)
    return None if irreps is None else o3.Irreps(str(irreps))


def load_frozen_backbone(path: str, feature_tap: str = "auto") -> FrozenBackbone:
    """Load a ``.ckpt`` / ``.nequip.zip`` model or a model ID on the CPU, then
    :func:`freeze_and_tap` it.

    On the CPU whatever device the file was saved from: the probe module moves it where it
    goes. The path is made absolute, so a probe reloaded from another directory finds it again.
    """
    path = path if path.startswith(MODEL_ID_PREFIX) else os.path.abspath(path)
    try:
        model = load_graph_model(path)
    except Exception as error:
        raise SpectralProbeError(
            f"spectral_probe.backbones: cannot load {path} as a NequIP model: {error}"
        ) from error
    return freeze_and_tap(model, feature_tap, path)


def freeze_and_tap(model, feature_tap: str = "auto", path: str = "the backbone"):
    """Freeze a NequIP ``GraphModel`` (eval mode, no grad) and split it at its feature tap.

    ``auto`` taps the input of the last module whose node-feature input reaches the highest
    degree: for NequIP, the input of the last interaction layer (its output is scalars only);
    for Allegro, the last equivariant edge tensors of its tensor track, summed per atom
    (:class:`~nequip_spectral.nn.allegro_tap.AllegroTensorTap`). A module name taps the input
    of that module of the backbone's ``SequentialGraphNetwork`` (the Allegro module's name:
    its tensor track).
    """
    model.eval()
    model.requires_grad_(False)

    named = graph_network_modules(model)
    names = [name for name, _ in named]
    modules = [module for _, module in named]
    allegro = [i for i, module in enumerate(modules) if is_allegro_module(module)]
    if allegro and feature_tap in ("auto", names[allegro[-1]]):  # Allegro's tensor track
        tap = AllegroTensorTap(modules[allegro[-1]])
        return FrozenBackbone(
            path=path,
            model=model,
            before_tap=(*modules[: allegro[-1]], tap),
            from_tap=tuple(modules[allegro[-1] + 1 :]),
            irreps=tap.irreps,
        )
    irreps = [_node_feature_irreps(module) for module in modules]
    if feature_tap == "auto":
        top = max((ir.lmax for ir in irreps if ir is not None), default=0)
        if top == 0:
            raise SpectralProbeError(
                f"spectral_probe.backbones: {path} has no equivariant node features with l > 0 "
                "to tap (its modules' node-feature inputs are all scalars)"
            )
        index = max(i for i, ir in enumerate(irreps) if ir is not None and ir.lmax == top)
    elif feature_tap in names:
        index = names.index(feature_tap)
        if irreps[index] is None or irreps[index].lmax == 0:
            raise SpectralProbeError(
                f"spectral_probe.feature_tap: the input of '{feature_tap}' in {path} has no "
                f"l > 0 node features ({irreps[index]})"
            )
    else:
        raise SpectralProbeError(
            f"spectral_probe.feature_tap: no module '{feature_tap}' in {path}; "
            f"use 'auto' or one of {names}"
        )
    return FrozenBackbone(
        path=path,
        model=model,
        before_tap=tuple(modules[:index]),
        from_tap=tuple(modules[index:]),
        irreps=irreps[index],
    )


@model_builder
def FrozenBackboneSPN(probe, type_names, r_max: float):
    """SPN heads for every probed ``l`` on the frozen features of one or more trained models.

    .. code-block:: yaml

      training_module:
        model:
          _target_: nequip_spectral.FrozenBackboneSPN
          seed: ${seed}
          model_dtype: float32
          type_names: ${model_type_names}
          r_max: ${cutoff_radius}
          probe: ${spectral_probe}

    Every backbone is checked before anything trains: the file loads, its type names are
    ``type_names``, its ``r_max`` fits the neighbor list, its tapped features have ``l > 0``,
    and all backbones share the same degree ``L``. The probe checkpoint does not store the
    backbones: reloading it loads them again from their paths.

    Args:
        seed (int): seed of the SPN heads' weights
        model_dtype (str): ``float32`` or ``float64`` for the heads
        type_names (List[str]): type names of the data, as the backbones have them
        r_max (float): the neighbor-list cutoff of the data
        probe: the ``spectral_probe:`` block
    """
    probe = SpectralProbeConfig.from_block(probe)
    probe.check_backbone_files()
    probe.check_cutoff(r_max, source="the model's r_max")
    probe.check_type_names(type_names, source="training_module.model.type_names")
    backbones = [load_frozen_backbone(path, probe.feature_tap) for path in probe.backbones]
    for backbone in backbones:
        if list(backbone.model.type_names) != list(type_names):
            raise SpectralProbeError(
                f"spectral_probe.backbones: {backbone.path} has type names "
                f"{list(backbone.model.type_names)}, the data has {list(type_names)}"
            )
        backbone_r_max = float(backbone.model.metadata["r_max"])
        if backbone_r_max > float(r_max):
            raise SpectralProbeError(
                f"spectral_probe.backbones: {backbone.path} has r_max {backbone_r_max}, more "
                f"than the neighbor list's {r_max}"
            )
    degrees = {backbone.irreps.lmax for backbone in backbones}
    if len(degrees) > 1:
        raise SpectralProbeError(
            f"spectral_probe.backbones: the tapped features have different degrees L {degrees}; "
            "probe backbones of one architecture together"
        )
    return SpectralProbeModel(backbones, probe, list(type_names))

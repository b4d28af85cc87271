"""``FrozenBackboneSPN``: the model builder that checks, loads and taps the backbones
(:mod:`nequip_spectral.nn.tap`) and puts the probe on them."""

from nequip.model.utils import model_builder

from ..config import SpectralProbeConfig, SpectralProbeError
from ..nn.probe import SpectralProbeModel
from ..nn.tap import load_frozen_backbone


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
    and all backbones have as many taps, of the same degrees ``L``. The probe checkpoint does
    not store the backbones: reloading it loads them again from their paths.

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
    # as many taps, of the same degrees (the taps' names, from the first backbone, may differ:
    # NequIP and Allegro backbones of one L are probed together)
    shapes = {tuple(ir.lmax for ir in backbone.tap_irreps) for backbone in backbones}
    if len(shapes) > 1:
        described = "; ".join(f"{b.path}: " + ", ".join(
            f"{tap} (L = {ir.lmax})" for tap, ir in zip(b.taps, b.tap_irreps, strict=True))
            for b in backbones)  # fmt: skip
        raise SpectralProbeError(
            "spectral_probe.backbones: the tapped features have different degrees L or taps "
            f"({described}); probe backbones of one architecture together"
        )
    return SpectralProbeModel(backbones, probe, list(type_names))

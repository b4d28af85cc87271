"""The ``spectral_probe:`` block: parsed and validated in one place.

Every component (``SpectralInjection``, ``FrozenBackboneSPN``, ``SpectralMetrics``) receives
the same block through ``${spectral_probe}`` and turns it into a :class:`SpectralProbeConfig`,
so a bad value gives the same error wherever it is read, before any training starts.
"""

import dataclasses
import functools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import ase.data

from ._keys import MAX_PROBE_L
from .heads import CONTROL, NULL, PROBE, Head, slots

MODEL_ID_PREFIX = "nequip.net:"  # a model NequIP fetches (and caches) by its ID
COMPILED_MODELS = (".nequip.pt2", ".nequip.pth", ".pt2", ".pth")  # nequip-compile output


class SpectralProbeError(ValueError):
    """A bad value in the ``spectral_probe:`` block (or a file it names)."""


_TARGETS = ("residual", "injected")
_ACTIVATIONS = (None, "gate")
_READOUTS = ("auto", "all", "centers")
_SOLVERS = ("closed_form", "sgd")
# force_directions: auto: a frame's Jacobian-vector products touch at most this many
# atom-directions (every component up to 32 atoms: 96 x 32), and never fewer than 8 directions
AUTO_ATOM_DIRECTIONS = 3072
AUTO_MIN_DIRECTIONS = 8
RETIRED = {  # options of earlier versions: ignored with a warning
    "ridge_selection": "each ridge strength is chosen on folds of consecutive frames "
    "(ridge_folds)",
}


def _fail(key: str, message: str):
    raise SpectralProbeError(f"spectral_probe.{key}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _species(key: str, value) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        _fail(key, f"must be a non-empty list of chemical symbols, e.g. [C, O]; got {value!r}")
    for symbol in value:
        if symbol not in ase.data.atomic_numbers or not isinstance(symbol, str):
            _fail(key, f"{symbol!r} is not a chemical symbol")
    return tuple(value)


def _option(default, values: str):
    """A field of the block with the values it takes (for the docs' table of options)."""
    return dataclasses.field(default=default, metadata={"values": values})


@dataclasses.dataclass(frozen=True)
class SpectralProbeConfig:
    r"""The ``spectral_probe:`` block of a NequIP config.

    .. code-block:: yaml

      spectral_probe:
        backbones: [path/to/best.ckpt]
        l_values: [0, 1, 2, 3, 4, 5, 6, 7]
        degree: 2
        marked_direction: random
        centers: [C, O]
        neighbors: [H]
        center_fraction: null
        cutoff: 4.0
        amplitude: 0.05
        target: residual
        channels: 8
        activation: null
        readout: auto
        solver: closed_form
        force_spectrum: true
        feature_budget: 8000
        force_directions: auto
        ridge_folds: 5
        feature_tap: auto
        seed: 0

    Args:
        backbones: trained NequIP models to probe: ``.ckpt`` or ``.nequip.zip`` files, or
          model IDs ``nequip.net:group/name:version`` (a compiled model is refused)
        l_values: angular frequencies ``l`` to inject and probe
        degree: polynomial degree ``d_r`` of the SPN heads (1, 2 or 3)
        marked_direction: ``random`` (one per frame, seeded), ``field:NAME``, or ``shuffled``
          (the null control: the signal is injected along the ``random`` direction, the SPN
          reads an independent one)
        centers: species of the injection centers ``C``
        neighbors: species of their neighbors ``N(i)``, disjoint from ``centers`` unless
          ``center_fraction`` is set
        center_fraction: ``null`` (every atom of the ``centers`` species is a center), or a
          fraction ``F`` in (0, 1), 0.5 recommended: the centers of each frame are then a
          random subset of about ``F`` of its center-species atoms (see below), and
          ``centers`` and ``neighbors`` may share species (one-element systems)
        cutoff: pair cutoff of the injected signal (at most the neighbor-list ``r_max``)
        amplitude: ``eps``, in energy units of the data
        target: ``residual`` (frozen model's error on perturbed labels) or ``injected``
        channels: width of the SPN's linear mixes
        activation: ``null`` (exact polynomial) or ``gate``
        readout: sum head outputs over ``all`` atoms or over the ``centers`` only; ``auto``:
          ``centers`` with ``center_fraction`` (the only readout it works with), else ``all``
        solver: ``closed_form`` (each head the exact ridge optimum of its function class) or
          ``sgd`` (heads trained by gradient descent, as in the paper)
        force_spectrum: also fit heads to energies and forces (the force spectrum); the
          energy spectrum (heads fitted to energies alone) is always computed
        feature_budget: ``closed_form``: the most polynomial features per head
        force_directions: ``closed_form``: the force rows of a frame of ``N`` atoms: ``all``
          (its ``3N`` components), a number ``S`` (``S`` random directions, a sketch), or
          ``auto``: every component up to 32 atoms, beyond that a sketch of ``3072 / N``
          directions (at least 8), so that a frame costs about what a 32-atom frame costs
          (:meth:`force_rows`)
        ridge_folds: ``closed_form``: each head's ridge strength is chosen by cross-validation
          over this many folds of the training and validation frames, each a block of frames
          consecutive in their trajectory (never a frame's neighbours in time on both sides of
          a fit), and a head takes feature weight only where that helps on every fold
        feature_tap: which backbone features the heads read: ``auto`` (NequIP: the input of
          the last interaction layer; Allegro: its last layer's tensors), a module name of
          the backbone's network, ``layers`` (every layer whose features have ``l > 0``, from
          one pass: a spectrum per layer) or a list of module names
        seed: seed of the marked directions, the marked centers and the SPN weights

    Why centers and neighbors must not overlap, and ``center_fraction``. A pair counted in
    both directions, as :math:`(i, j)` and as :math:`(j, i)`, contributes
    :math:`f_c(r) \sqrt{2l+1} [P_l(\hat n \cdot \hat r_{ij}) + P_l(-\hat n \cdot \hat r_{ij})]`
    since :math:`\hat r_{ji} = -\hat r_{ij}` at the same distance, and
    :math:`P_l(-x) = (-1)^l P_l(x)`: every odd-``l`` term cancels (even ``l`` doubles). With
    disjoint species no pair is counted twice. In a one-element system (a metal, ``centers:
    [Cu]``, ``neighbors: [Cu]``) every pair would be, so ``center_fraction`` marks a random
    subset :math:`M` of the center-species atoms of each frame as the centers:

    .. math::

        s_l = \sum_{i \in M} \sum_{j \in N(i)} f_c(r_{ij}) \sqrt{2l+1}
            P_l(\hat n \cdot \hat r_{ij}) = \sum_{i \in M} y_i,

    each marked center with all its neighbors. A pair of two marked atoms counts both ways
    (its odd terms cancel), a marked-unmarked pair once (its odd terms survive). And each
    term :math:`y_i` is a function of center :math:`i`'s own environment, so heads that read
    the marked centers (``readout: centers``, required with ``center_fraction``: the
    backbone's features cannot tell a marked atom from another, a sum over every atom
    cannot single them out) can represent it up to the ceiling, as with disjoint species.
    Which fraction keeps the most odd-``l`` power: with a fraction ``F`` marked, an ordered
    pair :math:`(i, j)` of center-species atoms counts once when :math:`i` is marked and
    :math:`j` is not, with probability :math:`F(1 - F)` (:math:`k(n-k) / n(n-1)` for exactly
    :math:`k = F n` of :math:`n` marked), so the expected number of such pairs, and with it
    the odd-``l`` power (a sum of pair terms of either sign), is proportional to
    :math:`F(1 - F)`, maximal at ``F = 1/2``: 0.5 is the recommended value. (On a
    centrosymmetric site :math:`y_i` has no odd part: there the odd ``l`` come from thermal
    distortions alone.) A frame marks :math:`F n` (rounded) of its :math:`n` center-species
    atoms, at least one and, when :math:`n \ge 2`, not all. The subset is drawn from a seed
    hashed from ``seed`` and the frame's positions and species (as the ``random`` marked
    direction), so it is the same in every epoch, worker, rank and rerun, and it is stored
    in the frame as the per-atom field ``spectral_center`` (1 for a marked center), which
    ``readout: centers`` sums over. The injected forces hold the subset fixed, as they hold
    the marked direction: the exact gradient of the signal of those centers.
    """

    backbones: tuple[str, ...] = _option((), "files (.ckpt, .nequip.zip) or model IDs")
    l_values: tuple[int, ...] = _option(tuple(range(8)), f"integers 0 to {MAX_PROBE_L}")
    degree: int = _option(2, "1, 2, 3")
    marked_direction: str = _option("random", "random, field:NAME, shuffled")
    centers: tuple[str, ...] = _option(("C", "O"), "chemical symbols")
    neighbors: tuple[str, ...] = _option(("H",), "chemical symbols")
    center_fraction: float | None = _option(None, "null, or between 0 and 1 (0.5)")
    cutoff: float = _option(4.0, "positive, at most r_max")
    amplitude: float = _option(0.05, "positive")
    target: str = _option("residual", "residual, injected")
    channels: int = _option(8, "positive integer")
    activation: str | None = _option(None, "null, gate")
    readout: str = _option("auto", "auto, all, centers")
    solver: str = _option("closed_form", "closed_form, sgd")
    force_spectrum: bool = _option(True, "true, false")
    feature_budget: int = _option(8000, "positive integer")
    force_directions: int | str = _option("auto", "auto, all, a positive integer")
    ridge_folds: int = _option(5, "integer, at least 2")
    feature_tap: str | tuple = _option("auto", "auto, layers, a module name, a list of them")
    seed: int = _option(0, "integer")

    @classmethod
    def from_block(cls, block: Any) -> "SpectralProbeConfig":
        """Build from the YAML block (a ``dict``, an OmegaConf ``DictConfig``, or a config)."""
        if isinstance(block, cls):
            return block
        from omegaconf import DictConfig, OmegaConf

        if isinstance(block, DictConfig):
            block = OmegaConf.to_container(block, resolve=True)
        if not isinstance(block, Mapping):
            raise SpectralProbeError(
                f"spectral_probe: must be a mapping of options, got {type(block).__name__}"
            )
        # every component gets the same block (``${spectral_probe}``): parsed and checked once
        return _parse(cls, json.dumps(block, sort_keys=True, default=str))

    @classmethod
    def _from_mapping(cls, block: Mapping) -> "SpectralProbeConfig":
        known = [field.name for field in dataclasses.fields(cls)]
        for key in block:
            if key in RETIRED:  # an earlier version's option (its runs still rebuild)
                warnings.warn(f"spectral_probe.{key} is no longer used: {RETIRED[key]}",
                              stacklevel=2)  # fmt: skip
            elif key not in known:
                _fail(key, f"unknown option; valid options are {known}")
        values = {
            key: tuple(value) if isinstance(value, (list, tuple)) else value
            for key, value in block.items()
            if key not in RETIRED
        }
        return cls(**values)

    def __post_init__(self):
        if isinstance(self.backbones, str) or not all(
            isinstance(path, str) for path in self.backbones
        ):
            _fail("backbones", f"must be a list of file paths, got {self.backbones!r}")

        if not isinstance(self.l_values, tuple) or len(self.l_values) == 0:
            _fail("l_values", f"must be a non-empty list of integers, got {self.l_values!r}")
        for l in self.l_values:
            if not _is_int(l) or not 0 <= l <= MAX_PROBE_L:
                _fail("l_values", f"{l!r} is not an integer between 0 and {MAX_PROBE_L}")
        if len(set(self.l_values)) != len(self.l_values):
            _fail("l_values", f"has repeated values: {list(self.l_values)}")

        if not _is_int(self.degree) or not 1 <= self.degree <= 3:
            _fail("degree", f"must be 1, 2 or 3, got {self.degree!r}")

        direction = self.marked_direction
        if not isinstance(direction, str) or not (
            direction in ("random", "shuffled")
            or (direction.startswith("field:") and len(direction) > 6)
        ):
            _fail(
                "marked_direction",
                f"must be 'random', 'shuffled' or 'field:NAME', got {direction!r}",
            )

        _species("centers", self.centers)
        _species("neighbors", self.neighbors)
        fraction = self.center_fraction
        if fraction is not None and (
            not _is_number(fraction) or not math.isfinite(fraction) or not 0 < fraction < 1
        ):
            _fail(
                "center_fraction",
                f"must be null or a number strictly between 0 and 1 (0.5 recommended), "
                f"got {fraction!r}",
            )
        if self.readout == "auto":  # (a frozen dataclass: set through object)
            object.__setattr__(self, "readout", "all" if fraction is None else "centers")
        if fraction is not None and self.readout != "centers":
            _fail(
                "readout",
                "center_fraction needs readout: centers. The signal sums over each frame's "
                "marked centers, which the backbone's features cannot tell from the other "
                "atoms: only heads that sum over the marked centers can read it",
            )
        overlap = sorted(set(self.centers) & set(self.neighbors))
        if overlap and fraction is None:
            _fail(
                "neighbors",
                f"{overlap} also appear in centers. Centers and neighbors must be disjoint: "
                "a pair counted in both directions cancels every odd-l term of the signal. "
                "For one-element systems set spectral_probe.center_fraction (0.5 "
                "recommended; readout: auto reads its centers): a random subset of the "
                "centers of each frame is marked and the heads read those.",
            )

        for key in ("cutoff", "amplitude"):
            value = getattr(self, key)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                _fail(key, f"must be a positive number, got {value!r}")

        if self.target not in _TARGETS:
            _fail("target", f"must be one of {list(_TARGETS)}, got {self.target!r}")
        if not _is_int(self.channels) or self.channels < 1:
            _fail("channels", f"must be a positive integer, got {self.channels!r}")
        if self.activation not in _ACTIVATIONS:
            _fail("activation", f"must be null or 'gate', got {self.activation!r}")
        if self.readout not in _READOUTS:
            _fail("readout", f"must be one of {list(_READOUTS)}, got {self.readout!r}")
        if self.solver not in _SOLVERS:
            _fail("solver", f"must be one of {list(_SOLVERS)}, got {self.solver!r}")
        if self.activation is not None and self.solver == "closed_form":
            _fail(
                "activation",
                "'gate' needs solver: sgd (a gated head is not linear in its weights, so it "
                "has no closed form)",
            )
        if not isinstance(self.force_spectrum, bool):
            _fail("force_spectrum", f"must be true or false, got {self.force_spectrum!r}")
        if not _is_int(self.feature_budget) or self.feature_budget < 1:
            _fail("feature_budget", f"must be a positive integer, got {self.feature_budget!r}")
        directions = self.force_directions
        if directions not in ("auto", "all") and (not _is_int(directions) or directions < 1):
            _fail(
                "force_directions",
                f"must be 'auto', 'all' or a positive integer, got {directions!r}",
            )
        if not _is_int(self.ridge_folds) or self.ridge_folds < 2:
            _fail("ridge_folds", f"must be an integer of at least 2, got {self.ridge_folds!r}")
        taps = (self.feature_tap,) if isinstance(self.feature_tap, str) else self.feature_tap
        if not isinstance(taps, tuple) or not taps or not all(
            isinstance(tap, str) and tap for tap in taps
        ):
            _fail("feature_tap", "must be 'auto', 'layers', a module name or a list of module "
                  f"names, got {self.feature_tap!r}")  # fmt: skip
        if len(taps) > 1 and ({"auto", "layers"} & set(taps) or len(set(taps)) < len(taps)):
            _fail("feature_tap", f"a list must name distinct modules, got {list(taps)}")
        if not _is_int(self.seed):
            _fail("seed", f"must be an integer, got {self.seed!r}")

    def heads(self, slot: tuple, fit: str) -> list[Head]:
        """The heads of one set of a slot ``(backbone, tap)``, in order: one per probed
        ``l``, with the closed form a null head per ``l > 0`` too (one more right-hand side of
        the same normal equations; ``s_0`` does not depend on the direction, so ``l = 0`` has
        no null), and the control head last."""
        backbone, tap = slot
        return [Head(backbone, fit, l, role, tap) for l, role in self.head_roles]

    @property
    def tap_names(self) -> tuple:
        """The taps of every backbone: ``feature_tap`` as a tuple, ``layers`` resolved on the
        first backbone (loaded once a process)."""
        if self.feature_tap == "layers":
            from .nn.tap import tap_names

            return tap_names(self.backbones[0], self.feature_tap)
        return (self.feature_tap,) if isinstance(self.feature_tap, str) else self.feature_tap

    def slots(self) -> list[tuple]:
        """``(backbone, tap)`` of every set of heads (:func:`~nequip_spectral.heads.slots`)."""
        return slots(len(self.backbones), len(self.tap_names))

    @property
    def head_roles(self) -> list[tuple]:
        """``(l, role)`` of every head of a set (see :meth:`heads`)."""
        return [(l, PROBE) for l in self.l_values] + [(l, NULL) for l in self.null_l_values] + [
            (None, CONTROL)
        ]

    @property
    def null_l_values(self) -> list[int]:
        """The ``l`` of the null heads: with the closed form, every probed ``l > 0``."""
        return [l for l in self.l_values if l > 0] if self.solver == "closed_form" else []

    def force_rows(self, num_atoms: int) -> int:
        """How many force rows (directions) a frame of ``num_atoms`` atoms gets."""
        components = 3 * num_atoms
        if self.force_directions == "all":
            return components
        if self.force_directions == "auto":
            return min(components, max(AUTO_MIN_DIRECTIONS, AUTO_ATOM_DIRECTIONS // num_atoms))
        return min(components, self.force_directions)

    @property
    def direction_field(self) -> str | None:
        """The data field holding the marked direction, or ``None`` (``random``, ``shuffled``)."""
        if self.marked_direction in ("random", "shuffled"):
            return None
        return self.marked_direction.split(":", 1)[1]

    def check_cutoff(self, r_max: float, source: str = "the neighbor-list r_max") -> None:
        """Raise unless the signal's cutoff fits inside the neighbor list."""
        if self.cutoff > float(r_max):
            _fail(
                "cutoff",
                f"{self.cutoff} exceeds {source} ({float(r_max)}): pairs beyond r_max are "
                "missing from the neighbor list; use a cutoff <= r_max",
            )

    def check_backbone_files(self) -> None:
        """Raise unless at least one backbone is given and every file is readable (a model ID,
        ``nequip.net:group/name:version``, is left to NequIP's loader)."""
        if len(self.backbones) == 0:
            _fail("backbones", "give at least one trained model (.ckpt or .nequip.zip)")
        for path in self.backbones:
            if path.startswith(MODEL_ID_PREFIX):
                continue
            if path.endswith(COMPILED_MODELS):
                _fail(
                    "backbones",
                    f"{path} is a compiled model (nequip-compile): it keeps no internal "
                    "features to tap; give the .ckpt or .nequip.zip it was compiled from",
                )
            if not os.path.isfile(path):
                _fail("backbones", f"no such file: {path}")
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as error:
                _fail("backbones", f"cannot read {path}: {error}")

    def check_type_names(self, type_names: Sequence[str], source: str = "the model") -> None:
        """Raise unless every center and neighbor species is one of the model's types."""
        for key in ("centers", "neighbors"):
            missing = [s for s in getattr(self, key) if s not in type_names]
            if missing:
                _fail(key, f"{missing} not among the type names of {source}: {list(type_names)}")


@functools.lru_cache(maxsize=32)
def _parse(cls, text: str) -> SpectralProbeConfig:
    return cls._from_mapping(json.loads(text))


def option_rows() -> list[tuple[str, str, str, str]]:
    """``(option, default, values, meaning)`` of every option of the block, in order: the
    defaults and values from the fields, the meanings from the class docstring's ``Args``."""
    meanings, name = {}, None
    args = SpectralProbeConfig.__doc__.split("    Args:\n", 1)[1].split("\n\n", 1)[0]
    for line in args.splitlines():
        head, _, rest = line.strip().partition(": ")
        if line.startswith("        ") and not line.startswith("          ") and rest:
            name, meanings[head] = head, rest
        elif name is not None:
            meanings[name] += " " + line.strip()

    def as_yaml(value) -> str:
        if isinstance(value, tuple):
            return f"[{', '.join(map(str, value))}]"
        return json.dumps(value) if value is None or isinstance(value, bool) else str(value)

    return [
        (field.name, as_yaml(field.default), field.metadata["values"], meanings[field.name])
        for field in dataclasses.fields(SpectralProbeConfig)
    ]

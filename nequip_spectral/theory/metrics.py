r"""The spectrum's metrics, from per-frame sums (so that DDP reduces sums, never ratios).

For one backbone, one kind (energies or forces) and one probed ``l``, with :math:`t` the head's
training target, :math:`\hat y` its output, :math:`\hat y_0` the control head's output (zero
for ``target: injected``) and :math:`e = \epsilon s_l` the injected signal, each frame keeps

==========  ====================================
``n``       number of values (1, or 3 x atoms)
``tt``      :math:`\sum t^2`
``rr``      :math:`\sum (t - \hat y)^2`
``e``       :math:`\sum e`
``ee``      :math:`\sum e^2`
``aa``      :math:`\sum (\hat y - \hat y_0 - e)^2`
==========  ====================================

and the control head keeps ``n, tt, rr`` of its own target. Then, over any set of frames
(undefined where the injected power, or its variance, is below ``NEGLIGIBLE`` times the
largest probed ``l``'s: no signal to recover),

.. math::

    G_l = \frac{\sum tt - \sum rr}{\sum n}, \quad
    \rho_l = \frac{G_l - G_0}{\sum ee / \sum n}, \quad
    R^2_\mathrm{inj}(l) = 1 - \frac{\sum aa / \sum n}{\sum ee / \sum n - (\sum e / \sum n)^2}.
"""

import numpy as np
import torch

from .bootstrap import cluster_bootstrap

HEAD_SUMS = ("n", "tt", "rr", "e", "ee", "aa")
NEGLIGIBLE = 1e-12  # an injected power or variance below this fraction of the largest l's
CONTROL_SUMS = ("n", "tt", "rr")
READINGS = ("rho", "R2_inj", "rho_recovered", "rho_chance")  # per l, with bootstrap intervals


def frame_sums(
    target: torch.Tensor,
    prediction: torch.Tensor,
    control: torch.Tensor,
    injected: torch.Tensor,
    frame: torch.Tensor,
    num_frames: int,
) -> torch.Tensor:
    """Per-frame ``HEAD_SUMS`` (shape ``(num_frames, 6)``) of one head.

    Args:
        target, prediction, control, injected: ``(num_values, ...)`` per energy or atom
        frame: ``(num_values,)`` frame index of each value
    """
    values = torch.stack(
        [
            torch.ones_like(target),
            target.square(),
            (target - prediction).square(),
            injected,
            injected.square(),
            (prediction - control - injected).square(),
        ],
        dim=-1,
    ).flatten(1, -2)  # (num_values, components, 6)
    per_value = values.sum(1).to(torch.float64)
    return per_value.new_zeros(num_frames, len(HEAD_SUMS)).index_add(0, frame, per_value)


def spectrum(head_totals: np.ndarray, control_totals: np.ndarray) -> dict:
    r"""Gain, rho, R2_inj and rho's two parts per head, from totals.

    With the residual target :math:`t_l = t_0 + e` (:math:`e` the injected signal) and
    :math:`\delta = \hat y_l - \hat y_0` (:math:`\hat y_0` the control head), the gain over the
    control splits exactly into what was recovered of the injection and chance terms:

    .. math::

        G_l - G_0 = \underbrace{\overline{e^2} - \overline{(e - \delta)^2}}_{\text{recovered}}
            + \underbrace{2\,\overline{\hat y_0 e} + 2\,\overline{(t_0 - \hat y_0)\,\delta}}_{
            \text{chance}},

    so ``rho = rho_recovered + rho_chance`` (each over :math:`\overline{e^2}`). The chance part
    grows with the backbone's own error and with what the heads fit to noise; it is zero for
    ``target: injected``; ``rho_recovered`` has no chance part that could read as recovery
    (fitted noise lowers it).

    Args:
        head_totals: ``(..., num_l, 6)`` summed ``HEAD_SUMS``
        control_totals: ``(..., 3)`` summed ``CONTROL_SUMS``

    Returns:
        ``{"gain", "rho", "R2_inj", "rho_recovered", "rho_chance"}``, each ``(..., num_l)``
    """
    n, tt, rr, e, ee, aa = np.moveaxis(head_totals, -1, 0)
    n0, tt0, rr0 = np.moveaxis(control_totals, -1, 0)
    gain = (tt - rr) / n
    control_gain = ((tt0 - rr0) / n0)[..., None]
    power = ee / n
    variance = power - (e / n) ** 2
    # no injected signal (power or variance at round-off level: symmetry can make an l vanish)
    with np.errstate(invalid="ignore"):
        negligible = NEGLIGIBLE * np.max(power, axis=-1, keepdims=True)
    power = np.where(power > negligible, power, np.nan)
    variance = np.where(variance > negligible, variance, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = (gain - control_gain) / power
        recovered = 1 - (aa / n) / power
        return {
            "gain": gain,
            "rho": rho,
            "R2_inj": 1 - (aa / n) / variance,
            "rho_recovered": recovered,
            "rho_chance": rho - recovered,
        }


def frame_contrast(head_frames: np.ndarray, boundary_index: int, above_index: int) -> np.ndarray:
    """Each frame's share of ``Delta = G_a - G_b``, mean over backbones: the series whose
    correlation in time sets the bootstrap's block length.

    Args:
        head_frames: ``(num_backbones, num_frames, num_l, 6)`` per-frame ``HEAD_SUMS``
    """
    n, tt, rr = head_frames[..., 0], head_frames[..., 1], head_frames[..., 2]
    gain = (tt - rr) / np.where(n > 0, n, 1)
    return (gain[..., boundary_index] - gain[..., above_index]).mean(0)


def bootstrap_spectrum(
    head_frames: np.ndarray,
    control_frames: np.ndarray,
    boundary_index: int,
    above_index: int,
    block_length: int,
    n_replicates: int = 2000,
    seed: int = 0,
) -> dict:
    """Replicates of the spectrum under the two-level cluster bootstrap
    (:func:`~nequip_spectral.theory.bootstrap.cluster_bootstrap`).

    Args:
        head_frames: ``(num_backbones, num_frames, ..., num_l, 6)`` per-frame ``HEAD_SUMS``,
            frames in trajectory order
        control_frames: ``(num_backbones, num_frames, ..., 3)`` per-frame ``CONTROL_SUMS``
        boundary_index, above_index: positions of ``l = a`` and ``l = b`` on the ``num_l`` axis
        block_length: frames per level-2 block

    Returns:
        each of ``READINGS``, of shape ``(n_replicates, ..., num_l)`` (mean over the drawn
        backbones), ``delta`` (``G_a - G_b``), ``rho_diff`` (``rho_a - rho_b``), ``rho_a``
        and ``rho_b``, each of shape ``(n_replicates, ...)``
    """

    def statistic(backbones, frames):
        rows = backbones[:, None]
        result = spectrum(head_frames[rows, frames].sum(1), control_frames[rows, frames].sum(1))
        return np.stack([result[name].mean(0) for name in ("gain", *READINGS)])

    with np.errstate(divide="ignore", invalid="ignore"):
        replicates = cluster_bootstrap(
            statistic, *head_frames.shape[:2], block_length, n_replicates, seed
        )
    gain, rho = replicates[:, 0], replicates[:, 1]
    return {
        **{name: replicates[:, 1 + i] for i, name in enumerate(READINGS)},
        "delta": gain[..., boundary_index] - gain[..., above_index],
        "rho_diff": rho[..., boundary_index] - rho[..., above_index],
        "rho_a": rho[..., boundary_index],
        "rho_b": rho[..., above_index],
    }


def null_floor(readings: np.ndarray) -> list:
    """Where 95% of readings with nothing to recover fall: the prediction interval of one more
    draw like ``readings`` (the null heads' readings, one per ``l``), mean +- t sd sqrt(1 + 1/n).

    Each null head is a whole draw of chance (its own fit to noise and its own test frames),
    which the bootstrap of test frames alone would miss; the readings are normalized per ``l``
    (rho, rho_recovered), so the null heads of every ``l`` are draws of one chance reading.
    """
    from scipy.stats import t

    finite = readings[np.isfinite(readings)]
    if len(finite) < 2:
        return [None, None]
    n, mean = len(finite), float(finite.mean())
    half = float(t.ppf(0.975, n - 1) * finite.std(ddof=1) * np.sqrt(1 + 1 / n))
    return [mean - half, mean + half]

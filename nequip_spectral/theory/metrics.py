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

and the control head keeps ``n, tt, rr`` of its own target. Then, over any set of frames,

.. math::

    G_l = \frac{\sum tt - \sum rr}{\sum n}, \quad
    \rho_l = \frac{G_l - G_0}{\sum ee / \sum n}, \quad
    R^2_\mathrm{inj}(l) = 1 - \frac{\sum aa / \sum n}{\sum ee / \sum n - (\sum e / \sum n)^2}.
"""

import numpy as np
import torch

HEAD_SUMS = ("n", "tt", "rr", "e", "ee", "aa")
CONTROL_SUMS = ("n", "tt", "rr")


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
    """Gain, rho and R2_inj per head from totals.

    Args:
        head_totals: ``(..., num_l, 6)`` summed ``HEAD_SUMS``
        control_totals: ``(..., 3)`` summed ``CONTROL_SUMS``

    Returns:
        ``{"gain", "rho", "R2_inj"}``, each of shape ``(..., num_l)``
    """
    n, tt, rr, e, ee, aa = np.moveaxis(head_totals, -1, 0)
    n0, tt0, rr0 = np.moveaxis(control_totals, -1, 0)
    gain = (tt - rr) / n
    control_gain = ((tt0 - rr0) / n0)[..., None]
    power = ee / n
    variance = power - (e / n) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "gain": gain,
            "rho": (gain - control_gain) / power,
            "R2_inj": 1 - (aa / n) / variance,
        }


def hierarchical_bootstrap(
    head_frames: np.ndarray,
    control_frames: np.ndarray,
    boundary_index: int,
    above_index: int,
    n_replicates: int = 2000,
    block_length: int = 10,
    seed: int = 0,
) -> dict:
    """Two-level cluster bootstrap of ``Delta = G_a - G_b`` and ``rho_a - rho_b``.

    Level 1 resamples backbones with replacement; level 2 resamples contiguous blocks of
    ``block_length`` test frames within each drawn backbone (MD frames are correlated).

    Args:
        head_frames: ``(num_backbones, num_frames, num_l, 6)`` per-frame ``HEAD_SUMS``
        control_frames: ``(num_backbones, num_frames, 3)`` per-frame ``CONTROL_SUMS``
        boundary_index, above_index: positions of ``l = a`` and ``l = b`` on the ``num_l`` axis

    Returns:
        for ``"delta"`` and ``"rho_diff"``: mean, 95% percentile interval, fraction ``<= 0``
    """
    rng = np.random.default_rng(seed)
    num_backbones, num_frames = head_frames.shape[:2]
    block_length = max(1, min(block_length, num_frames))
    starts = np.arange(0, num_frames - block_length + 1)
    blocks_per_draw = int(np.ceil(num_frames / block_length))
    columns = [boundary_index, above_index]
    replicates = np.empty((n_replicates, 2))
    for r in range(n_replicates):
        backbones = rng.integers(num_backbones, size=num_backbones)
        block_starts = rng.choice(starts, size=(num_backbones, blocks_per_draw))
        frames = (block_starts[..., None] + np.arange(block_length)).reshape(num_backbones, -1)
        heads = head_frames[backbones[:, None], frames][:, :, columns].sum(1)
        controls = control_frames[backbones[:, None], frames].sum(1)
        result = spectrum(heads, controls)
        replicates[r] = [
            np.mean(result["gain"][:, 0] - result["gain"][:, 1]),
            np.mean(result["rho"][:, 0] - result["rho"][:, 1]),
        ]
    return {
        name: {
            "mean": float(values.mean()),
            "ci95": [float(q) for q in np.percentile(values, [2.5, 97.5])],
            "frac_le_0": float(np.mean(values <= 0)),
        }
        for name, values in zip(("delta", "rho_diff"), replicates.T, strict=True)
    }

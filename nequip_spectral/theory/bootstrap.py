"""The two-level cluster bootstrap: backbones, then time blocks of test frames.

Level 1 draws backbones with replacement (the clusters). Level 2 draws, for each drawn
backbone, a circular block bootstrap of its test frames in trajectory order (consecutive MD
frames are correlated, so blocks of them are resampled, not single frames), with the index
draws of ``arch``'s :class:`~arch.bootstrap.CircularBlockBootstrap`.
"""

import math

import numpy as np

MIN_ESTIMATED = 8  # values a block-length estimate needs


def choose_block_length(series: np.ndarray) -> int:
    """The block length for a time-ordered series: the Politis-White estimate
    (``arch.bootstrap.optimal_block_length``, circular column), rounded up, at least 1; 1 for
    fewer than ``MIN_ESTIMATED`` values (the estimate needs more: arch fails below 8)."""
    from arch.bootstrap import optimal_block_length

    series = np.asarray(series, dtype=float)
    if len(series) < MIN_ESTIMATED or not np.all(np.isfinite(series)) or np.ptp(series) == 0:
        return 1
    with np.errstate(divide="ignore", invalid="ignore"):  # arch's autocorrelations of a short
        estimate = float(optimal_block_length(series)["circular"].iloc[0])  # series divide by 0
    return int(min(len(series), max(1, math.ceil(estimate))))


def lag1_autocorrelation(series: np.ndarray) -> float:
    """Correlation of a series with itself one step later (how much neighbours share)."""
    series = np.asarray(series, dtype=float)
    if len(series) < 3 or np.ptp(series) == 0:
        return float("nan")
    return float(np.corrcoef(series[:-1], series[1:])[0, 1])


def cluster_bootstrap(statistic, num_backbones: int, num_frames: int, block_length: int,
                      n_replicates: int = 2000, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Replicates of ``statistic`` under the two-level bootstrap.

    Args:
        statistic: ``(backbones, frames) -> array``: ``backbones`` of shape ``(B,)`` and
            ``frames`` of shape ``(B, num_frames)`` index the per-frame data (frames in
            trajectory order); returns the replicate's statistics
        num_backbones, num_frames: the data's sizes
        block_length: frames per block (1: the i.i.d. bootstrap of frames)

    Returns:
        ``(n_replicates, ...)``: the statistic of every replicate
    """
    from arch.bootstrap import CircularBlockBootstrap

    rng = np.random.default_rng(seed)
    block_length = int(min(max(1, block_length), num_frames))
    blocks = CircularBlockBootstrap(block_length, np.arange(num_frames), seed=rng)
    draws = (data[0][0] for data in blocks.bootstrap(n_replicates * num_backbones))
    replicates = []
    for _ in range(n_replicates):
        backbones = rng.integers(num_backbones, size=num_backbones)
        frames = np.stack([next(draws) for _ in range(num_backbones)])
        replicates.append(statistic(backbones, frames))
    return np.stack(replicates)


def summarize(replicates: np.ndarray) -> dict:
    """Mean, 95% percentile interval and fraction ``<= 0`` of one statistic's replicates
    (non-finite replicates, e.g. of a ratio, are left out of the mean and the interval)."""
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return {"mean": None, "ci95": [None, None], "frac_le_0": None}
    return {
        "mean": float(finite.mean()),
        "ci95": [float(q) for q in np.percentile(finite, [2.5, 97.5])],
        "frac_le_0": float(np.mean(replicates <= 0)),
    }


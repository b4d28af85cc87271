"""The two-level cluster bootstrap on per-frame sums whose answers are known, and the per-frame
file that carries each test frame's place in its trajectory."""

import numpy as np
import pytest
from helpers import as_frames

from nequip_spectral.report import build_report
from nequip_spectral.report.frames import FrameSums
from nequip_spectral.theory.bootstrap import (
    choose_block_length,
    cluster_bootstrap,
    lag1_autocorrelation,
    summarize,
)
from nequip_spectral.theory.metrics import bootstrap_spectrum


def contrast_frames(contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame sums with ``G_a - G_b`` of frame ``t`` equal to ``contrast[..., t]``.

    ``contrast`` has shape ``(backbones, frames)``; one kind, ``l_values`` ``(a, b)``.
    """
    num_backbones, num_frames = contrast.shape
    head = np.zeros((num_backbones, num_frames, 1, 2, 6))
    head[..., 0] = 1.0  # n
    head[..., 0, 1] = 1.0 + contrast[..., None]  # tt at l = a (rr = 0: gain = tt)
    head[..., 1, 1] = 1.0  # tt at l = b
    head[..., 4] = 1.0  # ee: unit injected power, so rho_a - rho_b = G_a - G_b
    control = np.zeros((num_backbones, num_frames, 1, 3))
    control[..., 0] = 1.0
    return head, control


def delta_of(contrast, block_length, n_replicates=1000, seed=0) -> dict:
    head, control = contrast_frames(contrast)
    replicates = bootstrap_spectrum(head, control, 0, 1, block_length, n_replicates, seed)
    return summarize(replicates["delta"][:, 0])


def width(stats) -> float:
    return stats["ci95"][1] - stats["ci95"][0]


def ar1(num_frames, phi, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    series = np.zeros(num_frames)
    for t in range(1, num_frames):
        series[t] = phi * series[t - 1] + rng.normal()
    return series


def test_a_clear_contrast_excludes_zero():
    rng = np.random.default_rng(0)
    stats = delta_of(0.5 + 0.2 * rng.normal(size=(2, 200)), block_length=5)
    assert stats["ci95"][0] > 0.4 and stats["frac_le_0"] == 0.0
    assert stats["ci95"][0] < stats["mean"] < stats["ci95"][1]


def test_a_zero_contrast_is_below_zero_half_the_time():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(1, 300))
    stats = delta_of(noise - noise.mean(), block_length=3)  # the estimate is exactly 0
    assert 0.4 < stats["frac_le_0"] < 0.6
    assert stats["ci95"][0] < 0 < stats["ci95"][1]


def test_clusters_with_different_means_widen_the_interval():
    rng = np.random.default_rng(2)
    noise = 0.1 * rng.normal(size=(4, 200))
    alike = delta_of(0.5 + noise, block_length=5)
    apart = delta_of(np.array([[0.1], [0.4], [0.6], [0.9]]) + noise, block_length=5)
    assert width(apart) > 5 * width(alike)
    assert alike["mean"] == pytest.approx(apart["mean"], abs=0.01)


def test_time_blocks_widen_the_interval_of_a_correlated_series_and_not_of_a_shuffled_one():
    series = ar1(600, phi=0.9)[None]
    assert lag1_autocorrelation(series[0]) > 0.8
    chosen = choose_block_length(series[0])
    assert chosen >= 5
    iid, blocks = delta_of(series, 1), delta_of(series, chosen)
    assert width(blocks) > 2 * width(iid)

    shuffled = np.random.default_rng(3).permutation(series[0])[None]
    assert abs(lag1_autocorrelation(shuffled[0])) < 0.1
    chosen_shuffled = choose_block_length(shuffled[0])
    assert chosen_shuffled <= 3
    ratio = width(delta_of(shuffled, chosen_shuffled)) / width(delta_of(shuffled, 1))
    assert 0.8 < ratio < 1.25


def recorded_draws(num_backbones, num_frames, block_length, n_replicates) -> list:
    """The ``(backbones, frames)`` that :func:`cluster_bootstrap` hands its statistic in every
    replicate."""
    draws = []

    def statistic(backbones, frames):
        draws.append((backbones, frames))
        return np.zeros(1)

    cluster_bootstrap(statistic, num_backbones, num_frames, block_length, n_replicates)
    return draws


def test_one_backbone_resamples_circular_blocks_of_consecutive_frames():
    draws = recorded_draws(1, 20, block_length=4, n_replicates=30)
    for backbones, frames in draws:
        assert backbones.tolist() == [0] and frames.shape == (1, 20)
        blocks = frames[0].reshape(5, 4)
        assert np.all((np.diff(blocks, axis=1) % 20) == 1)  # runs, wrapping around the end
    assert len({tuple(f[0]) for _, f in draws}) == 30


def test_each_drawn_backbone_gets_its_own_draw_of_time_blocks():
    """Level 2 draws the blocks of frames independently for every drawn backbone: in every
    replicate the three backbones' rows of frames are three different block draws."""
    for _, frames in recorded_draws(3, 20, block_length=4, n_replicates=30):
        assert frames.shape == (3, 20)
        assert np.all((np.diff(frames.reshape(3, 5, 4), axis=2) % 20) == 1)  # blocks of 4
        assert len({tuple(row) for row in frames}) == 3, frames


def test_the_same_seed_gives_the_same_replicates():
    contrast = np.random.default_rng(4).normal(size=(3, 50))
    head, control = contrast_frames(contrast)
    first, again, other = (
        bootstrap_spectrum(head, control, 0, 1, 4, 100, seed)["delta"] for seed in (7, 7, 8)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_frames_are_put_in_trajectory_order_and_padding_is_counted_once():
    # the loader gave frames 5, 2, 9 of a file and then frame 2 again (a sampler's padding)
    ids = np.array([50, 20, 90, 20])
    sources = {50: [("a.xyz", 5)], 20: [("a.xyz", 2)], 90: [("a.xyz", 9)]}
    head = np.arange(4.0).reshape(1, 4, 1, 1, 1) * np.ones((1, 4, 1, 1, 6))
    control = np.zeros((1, 4, 1, 3))
    frames = FrameSums.from_test(head, control, ids, sources, context={})
    assert frames.source_index.tolist() == [2, 5, 9] and frames.sources_known
    assert frames.head[0, :, 0, 0, 0].tolist() == [1.0, 0.0, 2.0]
    loader_head, _ = frames.in_order("loader")
    assert loader_head[0, :, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_the_report_gives_intervals_and_the_block_length(tmp_path):
    contrast = 0.5 + 0.1 * ar1(300, phi=0.8, seed=5)[None].repeat(2, 0)
    head, control = contrast_frames(contrast)
    frames = as_frames(head, control, (4, 5), kinds=("forces",))
    report = build_report(frames)
    assert report["bootstrap"]["block_length"] == choose_block_length(contrast[0])
    assert report["bootstrap"]["frame_order"] == "source"
    low, high = report["per_l"]["4"]["rho_ci95"]
    assert low < report["per_l"]["4"]["rho"] < high
    assert report["delta"]["ci95"][0] > 0 and report["cliff"]["ratio_ci95"][0] > 1
    frames.save(tmp_path / "frames.npz")
    assert build_report(FrameSums.load(tmp_path / "frames.npz")) == report
    assert build_report(frames, block_length=1)["bootstrap"]["block_length"] == 1


def test_the_block_length_is_chosen_from_the_mean_over_backbones():
    """The report's block length and lag-1 autocorrelation are those of the per-frame Delta
    averaged over backbones, not backbone 0's: backbone 0 i.i.d. (blocks of 1 to 3 frames),
    backbone 1 a strongly correlated AR(1) series that dominates the mean."""
    rng = np.random.default_rng(6)
    contrast = np.stack([0.5 + 0.1 * rng.normal(size=300), 0.5 + ar1(300, phi=0.95, seed=6)])
    mean = contrast.mean(0)
    assert choose_block_length(contrast[0]) <= 3 < choose_block_length(mean)
    report = build_report(as_frames(*contrast_frames(contrast), (4, 5), kinds=("forces",)))
    assert report["bootstrap"]["block_length"] == choose_block_length(mean)
    assert report["bootstrap"]["lag1_autocorrelation"] == pytest.approx(
        lag1_autocorrelation(mean), rel=1e-12
    )


def test_a_short_series_gets_blocks_of_one_frame():
    """A test split of a few frames (arch's estimate fails on fewer than 8 values)."""
    from nequip_spectral.theory.bootstrap import choose_block_length

    rng = np.random.default_rng(0)
    assert [choose_block_length(rng.normal(size=n)) for n in range(1, 8)] == [1] * 7
    assert choose_block_length(np.sin(np.arange(200) / 10)) > 1  # a correlated series: longer

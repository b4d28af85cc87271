import pytest
from omegaconf import OmegaConf

from nequip_spectral.config import SpectralProbeConfig, SpectralProbeError


def test_defaults_and_dictconfig():
    block = OmegaConf.create({"backbones": ["a.ckpt"], "l_values": [0, 3, 5], "degree": 3})
    probe = SpectralProbeConfig.from_block(block)
    assert probe.l_values == (0, 3, 5) and probe.degree == 3
    assert probe.centers == ("C", "O") and probe.neighbors == ("H",)
    assert probe.center_fraction is None
    assert probe.direction_field is None
    assert SpectralProbeConfig.from_block({"marked_direction": "field:efield"}).direction_field == (
        "efield"
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("l_values", [], "non-empty"),
        ("l_values", [0, -1], "-1"),
        ("l_values", [1.5], "1.5"),
        ("l_values", [2, 2], "repeated"),
        ("l_values", 3, "non-empty list"),
        ("degree", 0, "1, 2 or 3"),
        ("degree", 4, "1, 2 or 3"),
        ("marked_direction", "bond", "field:NAME"),
        ("centers", ["C", "Xx"], "'Xx' is not a chemical symbol"),
        ("neighbors", ["H", "C"], "disjoint"),
        ("cutoff", -1.0, "positive"),
        ("amplitude", float("nan"), "positive"),
        ("target", "energy", "residual"),
        ("channels", 0, "positive integer"),
        ("activation", "relu", "gate"),
        ("readout", "some", "centers"),
        ("backbones", "a.ckpt", "list of file paths"),
        ("colour", "red", "unknown option"),
        ("solver", "adam", "closed_form"),
        ("force_spectrum", "yes", "true or false"),
        ("feature_budget", 0, "positive integer"),
        ("force_directions", 0, "'auto', 'all' or a positive integer"),
        ("force_directions", None, "'auto', 'all' or a positive integer"),
        ("ridge_folds", 1, "integer of at least 2"),
        ("ridge_folds", 2.5, "integer of at least 2"),
        ("center_fraction", 0, "strictly between 0 and 1"),
        ("center_fraction", 1, "strictly between 0 and 1"),
        ("center_fraction", 1.5, "strictly between 0 and 1"),
        ("center_fraction", -0.2, "strictly between 0 and 1"),
        ("center_fraction", float("nan"), "strictly between 0 and 1"),
        ("center_fraction", "half", "strictly between 0 and 1"),
        ("center_fraction", True, "strictly between 0 and 1"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(SpectralProbeError, match=f"spectral_probe.{key}:") as error:
        SpectralProbeConfig.from_block({key: value})
    assert message in str(error.value)


def test_checks_against_model_and_files(tmp_path):
    probe = SpectralProbeConfig.from_block({"backbones": [str(tmp_path / "missing.ckpt")]})
    with pytest.raises(SpectralProbeError, match=r"spectral_probe\.backbones: no such file"):
        probe.check_backbone_files()
    with pytest.raises(SpectralProbeError, match=r"spectral_probe\.backbones: give at least one"):
        SpectralProbeConfig().check_backbone_files()
    with pytest.raises(SpectralProbeError, match=r"spectral_probe.centers: \['O'\] not among"):
        probe.check_type_names(["C", "H"])
    with pytest.raises(SpectralProbeError, match=r"spectral_probe\.cutoff: 4\.0 exceeds"):
        probe.check_cutoff(3.5)
    probe.check_cutoff(5.0)
    probe.check_type_names(["C", "H", "O"])


def test_a_gated_head_needs_gradient_descent():
    with pytest.raises(SpectralProbeError, match=r"spectral_probe\.activation: 'gate' needs"):
        SpectralProbeConfig.from_block({"activation": "gate"})
    assert SpectralProbeConfig.from_block({"activation": "gate", "solver": "sgd"}).solver == "sgd"


def test_shared_species_need_center_fraction():
    """Centers and neighbors of one species: refused with a message naming
    ``spectral_probe.center_fraction``, accepted with it."""
    block = {"centers": ["Cu"], "neighbors": ["Cu", "Au"]}
    with pytest.raises(SpectralProbeError, match=r"spectral_probe\.neighbors: \['Cu'\]") as error:
        SpectralProbeConfig.from_block(block)
    assert "spectral_probe.center_fraction" in str(error.value)
    probe = SpectralProbeConfig.from_block({**block, "center_fraction": 0.5, "readout": "centers"})
    assert probe.center_fraction == 0.5 and probe.neighbors == ("Cu", "Au")


def test_center_fraction_reads_the_marked_centers_unless_told_otherwise():
    """``readout: auto`` (the default) reads the marked centers with ``center_fraction``, the
    only readout that works with it, every atom without; ``all`` with it is refused."""
    block = {"centers": ["Cu"], "neighbors": ["Cu"], "center_fraction": 0.5}
    assert SpectralProbeConfig.from_block(block).readout == "centers"
    assert SpectralProbeConfig.from_block({"centers": ["Cu"], "neighbors": ["Au"]}).readout == "all"
    with pytest.raises(SpectralProbeError, match=r"spectral_probe\.readout: center_fraction"):
        SpectralProbeConfig.from_block({**block, "readout": "all"})
    assert SpectralProbeConfig.from_block({**block, "readout": "centers"}).readout == "centers"


@pytest.mark.parametrize("name", ["model.nequip.pt2", "model.nequip.pth"])
def test_a_compiled_backbone_is_refused_with_what_to_give_instead(name):
    probe = SpectralProbeConfig(backbones=(name,))
    with pytest.raises(SpectralProbeError, match=r"compiled model .* \.ckpt or \.nequip\.zip"):
        probe.check_backbone_files()


def test_the_closed_form_has_a_null_head_for_every_l_but_0():
    """``s_0`` is the same along every direction: a null head at ``l = 0`` would recover it."""
    closed = SpectralProbeConfig(backbones=("a.ckpt",), l_values=(0, 2, 5))
    names = ["f_l0", "f_l2", "f_l5", "f_null2", "f_null5", "f_none"]
    assert [head.name for head in closed.heads((0, None), "f")] == names
    sgd = SpectralProbeConfig(backbones=("a.ckpt",), l_values=(0, 2, 5), solver="sgd")
    assert [head.name for head in sgd.heads((1, None), "e")] == ["e_l0", "e_l2", "e_l5", "e_none"]


def test_auto_force_rows_are_every_component_for_small_frames_and_bounded_beyond():
    """``force_directions: auto``: every component up to 32 atoms (aspirin's 63, a 32-atom
    cell's 96), then a sketch whose Jacobian-vector products touch no more atom-directions
    than a 32-atom frame's (15 directions for 200 atoms), never fewer than 8."""
    auto = SpectralProbeConfig.from_block({})
    assert auto.force_directions == "auto"
    assert [auto.force_rows(n) for n in (1, 21, 32)] == [3, 63, 96]
    assert [auto.force_rows(n) for n in (33, 108, 200, 384, 1000)] == [93, 28, 15, 8, 8]
    assert all(auto.force_rows(n) * n <= 96 * 32 for n in range(1, 385))
    every = SpectralProbeConfig.from_block({"force_directions": "all"})
    sketch = SpectralProbeConfig.from_block({"force_directions": 16})
    assert (every.force_rows(200), sketch.force_rows(200), sketch.force_rows(4)) == (600, 16, 12)


def test_a_retired_option_is_ignored_with_a_warning():
    """``ridge_selection`` (replaced by ``ridge_folds``) in an earlier run's block: a warning
    that says what replaced it, and the block parses (so that run's report rebuilds)."""
    with pytest.warns(UserWarning, match=r"ridge_selection is no longer used.*ridge_folds"):
        probe = SpectralProbeConfig.from_block({"ridge_selection": "leave_one_out"})
    assert probe.ridge_folds == 5


def test_the_block_is_parsed_and_checked_once_for_every_component():
    """The transform, the model, the loss and the callback each get ``${spectral_probe}``: the
    same block (a dict or an OmegaConf node, keys in any order) gives the same object."""
    from omegaconf import OmegaConf

    block = {"backbones": ["a.ckpt"], "l_values": [1, 4], "seed": 3}
    one = SpectralProbeConfig.from_block(block)
    assert SpectralProbeConfig.from_block(OmegaConf.create(block)) is one
    assert SpectralProbeConfig.from_block(dict(reversed(block.items()))) is one
    assert SpectralProbeConfig.from_block({**block, "l_values": [1, 5]}).l_values == (1, 5)


def test_the_docs_table_of_options_has_every_option_its_default_values_and_meaning():
    """The reference's table of the block (``option_rows``, read by ``docs/conf.py``) comes
    from the class itself: one row per option, in order, its default as YAML writes it, the
    values it takes and the docstring's words for it."""
    import dataclasses

    from nequip_spectral.config import option_rows

    rows = option_rows()
    assert [row[0] for row in rows] == [f.name for f in dataclasses.fields(SpectralProbeConfig)]
    defaults = {name: default for name, default, _, _ in rows}
    assert defaults["l_values"] == "[0, 1, 2, 3, 4, 5, 6, 7]" and defaults["readout"] == "auto"
    assert defaults["center_fraction"] == "null" and defaults["force_spectrum"] == "true"
    for name, _, values, meaning in rows:
        assert values and len(meaning) > 10, name
    assert "model IDs" in dict((r[0], r[3]) for r in rows)["backbones"]

import pytest

from nequip_spectral.theory.span import (
    boundary_multiplicity,
    span_dimensions,
    tensor_power_multiplicities,
    verify_span,
)


@pytest.mark.parametrize("L", [1, 2, 3, 4])
@pytest.mark.parametrize("degree", [1, 2, 3])
def test_closed_form_counts(L, degree):
    dims = span_dimensions(L, degree, up_to=degree * L + 3)
    assert sum(dims.values()) == (degree * L + 1) ** 2
    assert dims[degree * L] == 2 * degree * L + 1 and dims[degree * L + 1] == 0
    # the coupling paths account for the whole tensor power (L + 1)^(2d)
    paths = tensor_power_multiplicities(L, degree)
    assert sum(count * (2 * lam + 1) for lam, count in paths.items()) == (L + 1) ** (2 * degree)
    assert max(paths) == degree * L
    assert boundary_multiplicity(L, degree) == 1


def test_multiplicities_known_values():
    # (0 + 1 + 2)^2: degree 1 is reached by 0x1, 1x0, 1x1, 1x2, 2x1, 2x2 -> 6 paths;
    # 3 * 1 + 6 * 3 + 6 * 5 + 3 * 7 + 1 * 9 = 81 = 9^2
    assert tensor_power_multiplicities(2, 2) == {0: 3, 1: 6, 2: 6, 3: 3, 4: 1}


@pytest.mark.parametrize("L, degree", [(1, 2), (2, 1), (2, 2), (3, 2), (2, 3)])
def test_numerical_span_agrees(L, degree):
    measured = verify_span(L, degree, up_to=degree * L + 2)
    assert measured["rank"] == (degree * L + 1) ** 2
    for lam, dim in span_dimensions(L, degree, up_to=degree * L + 2).items():
        assert measured["dimensions"][lam] == pytest.approx(dim, abs=0.1), lam

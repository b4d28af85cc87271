"""The heads' harmonics of the marked direction stop at the ceiling ``d_r L``."""

import pytest
from e3nn import o3
from helpers import irreps_up_to

from nequip_spectral.nn.polynomial import PolynomialFeatures
from nequip_spectral.nn.spn import SPNHeads


@pytest.mark.parametrize("L, degree, ceiling", [(3, 2, 6), (1, 3, 3), (2, 1, 2)])
def test_heads_read_harmonics_up_to_degree_times_L(L, degree, ceiling):
    """SGD's SPN heads and the closed form's features on features up to ``L`` read
    ``Y_0 .. Y_{d_r L}``: up to 6 for L = 3, d_r = 2 and 3 for L = 1, d_r = 3 (not d_r + L)."""
    expected = o3.Irreps.spherical_harmonics(ceiling, p=-1)
    for heads in (
        SPNHeads(irreps_up_to(L), 1, degree, channels=1),
        PolynomialFeatures(irreps_up_to(L), degree, feature_budget=10**6),
    ):
        assert heads.ceiling == ceiling and heads.irreps_harmonics == expected

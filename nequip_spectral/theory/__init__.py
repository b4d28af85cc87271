"""Pure math of the diagnostic: the signal, the span theorem, the closed form's least squares,
the metrics and their bootstrap."""

from .ridge import LeastSquaresData, RidgeSolution, sketch_directions, solve_ridge
from .signal import legendre, pair_signal, polynomial_cutoff
from .span import boundary_multiplicity, span_dimensions, span_table, verify_span

__all__ = [
    "LeastSquaresData",
    "RidgeSolution",
    "boundary_multiplicity",
    "legendre",
    "pair_signal",
    "polynomial_cutoff",
    "sketch_directions",
    "solve_ridge",
    "span_dimensions",
    "span_table",
    "verify_span",
]

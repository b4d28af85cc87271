"""Pure math of the diagnostic (torch and e3nn only): the signal and the span theorem."""

from .signal import legendre, pair_signal, polynomial_cutoff
from .span import boundary_multiplicity, span_dimensions, span_table, verify_span

__all__ = [
    "boundary_multiplicity",
    "legendre",
    "pair_signal",
    "polynomial_cutoff",
    "span_dimensions",
    "span_table",
    "verify_span",
]

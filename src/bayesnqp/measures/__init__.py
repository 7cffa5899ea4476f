"""Measures: the entropy-weight NQP index and the location quotient of digital employment."""

from .entropy import EntropyIndex, entropy_index, entropy_weights
from .location_quotient import location_quotient

__all__ = ["EntropyIndex", "entropy_index", "entropy_weights", "location_quotient"]

"""Tile encoders: :mod:`wsiscale.models.encoders` (registry, loading) and :mod:`wsiscale.models.foundation`."""

"""Encoder errors (torch-free, so the CLI can catch them without importing torch)."""


class EncoderError(ValueError):
    """An unknown encoder name or unusable options."""


class EncoderWeightsError(EncoderError):
    """Weights that are missing, unreadable or do not fit the architecture."""

"""Ray Data pipelines: tiling slide archives (and, later, embedding), shard formats and run records.

Torch-free, like :mod:`wsiscale.io`: tiling actors may load cuCIM.
"""

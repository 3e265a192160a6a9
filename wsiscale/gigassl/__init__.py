"""Giga-SSL (Lazard et al., CVPRW 2023): slide-level self-supervised representations on Ray Train.

:mod:`wsiscale.gigassl.sparse` (sparse convolutions over the tile grid), :mod:`~wsiscale.gigassl.model`
(SparseConvMIL + SimCLR projector), :mod:`~wsiscale.gigassl.losses` (NT-Xent, also across workers),
:mod:`~wsiscale.gigassl.views` (tile subsets and coordinate jitter), :mod:`~wsiscale.gigassl.data`
(augmented embedding runs as a Ray Dataset of view pairs), :mod:`~wsiscale.gigassl.loop` (the Ray Train
worker loop) and :mod:`~wsiscale.gigassl.run` (the drivers of ``wsiscale gigassl train`` / ``embed``).
The augmented tile embeddings come from ``wsiscale embed`` with ``embed.augmentations``
(:mod:`wsiscale.data.augment`).
"""

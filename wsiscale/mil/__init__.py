"""Multiple-instance learning on tile embeddings: mean/max pooling, ABMIL and WENO on Ray Train.

:mod:`wsiscale.mil.bags` (slides as bags), :mod:`~wsiscale.mil.folds` (k-fold by slide),
:mod:`~wsiscale.mil.losses` (WENO's losses and pseudo labels), :mod:`~wsiscale.mil.loop` (the Ray
Train worker loop), :mod:`~wsiscale.mil.results` (metrics and files), :mod:`~wsiscale.mil.run` (the
driver of ``wsiscale train-mil``) and :mod:`~wsiscale.mil.heatmap` (attention/probability maps over
slide thumbnails). The models are in :mod:`wsiscale.models.mil`.
"""

"""Self-supervised pretraining: DINO on tiles and on region feature grids, SLPD (issue 7).

* :mod:`~wsiscale.pretrain.schedules` - per-step cosine schedules (lr, weight
  decay, teacher momentum) and the teacher-temperature warm-up; EMA update.
* :mod:`~wsiscale.pretrain.losses` - the DINO loss with centering and the SLPD
  prototype distillation losses (intra- and inter-slide).
* :mod:`~wsiscale.pretrain.heads` - the DINO projection head.
* :mod:`~wsiscale.pretrain.region_vit` - the region ViT over a grid of patch
  embeddings (HIPT ViT-4K / SLPD).
* :mod:`~wsiscale.pretrain.augment` - multi-crop views of token grids.
"""

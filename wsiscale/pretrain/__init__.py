"""Self-supervised pretraining on Ray Train: DINO on tiles and on region feature grids, SLPD.

* :mod:`~wsiscale.pretrain.run` - the driver: inputs, ``TorchTrainer``, progress, encoder export.
* :mod:`~wsiscale.pretrain.loop` - ``train_loop_per_worker``: DDP, DINO, SLPD losses, checkpoints.
* :mod:`~wsiscale.pretrain.data` / :mod:`~wsiscale.pretrain.tile_data` - Ray Datasets of region
  grids (with SLPD targets) and of DINO views of tiles.
* :mod:`~wsiscale.pretrain.augment` / :mod:`~wsiscale.pretrain.tile_augment` - multi-crop views
  of token grids and of RGB tiles (DINO's recipe, numpy/OpenCV).
* :mod:`~wsiscale.pretrain.slpd` - SLPD's clustering step on Ray Data actors and its targets.
* :mod:`~wsiscale.pretrain.evaluate` / :mod:`~wsiscale.pretrain.features` - held-out probes of
  the teacher's slide features.
* :mod:`~wsiscale.pretrain.schedules`, :mod:`~wsiscale.pretrain.losses`,
  :mod:`~wsiscale.pretrain.heads`, :mod:`~wsiscale.pretrain.region_vit` - schedules and EMA,
  the DINO loss with centering and SLPD's prototype targets, the DINO head, the region ViT.
"""

"""Ray Train machinery shared by every training stage (pretrain, mil, gigassl, five).

- :mod:`wsiscale.train.scaling`: the worker group (``ScalingConfig``) and the cluster checks before it;
- :mod:`wsiscale.train.checkpoints`: ``state.pt`` + ``meta.json`` checkpoints, reported by rank 0;
- :mod:`wsiscale.train.distributed`: gradient sums and buffer averages over the workers;
- :mod:`wsiscale.train.schedules`: per-step schedules (cosine with warm-up).

The method packages hold only the method (model, losses, step) and import from here,
never from each other.
"""

"""`ray job submit` entrypoint: DINO/SLPD pretraining of the region or patch encoder on Ray Train.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pretrain.py --config jobs/configs/pretrain.yaml

Input: ``--embeddings`` (default ``<output>/regions``), a
regions-mode embedding run (``embed.mode=regions``: one ``[D, 16, 16]`` grid
of patch embeddings per 4096 px region). ``pretrain.num_workers`` Ray Train
workers (``[min, max]`` is elastic) train the region ViT with DINO (DDP; NCCL
and autocast on GPUs). Checkpoints go to ``<out>/pretrain`` (``--out``,
default ``<output>/pretrain``); submitting the same job again resumes from the
latest one, and a failed worker group restarts from it up to
``pretrain.max_failures`` times. The final teacher backbone is exported to
``<out>/encoder`` (safetensors + ``encoder.json``).

``--tiles RUN`` (or ``pretrain.level: patch``) pretrains the patch encoder
(``pretrain.patch_encoder``, ViT-S/16 by default) with DINO on a tiling run
with pixels (default ``<output>/tiles``); its exported ``encoder/`` directory
is a registry encoder (``embed.encoder: <out>/encoder``).

Exit status: 0 on success, 2 for a bad config or a missing/unsuitable run.
"""

from __future__ import annotations

import sys

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)


def main(argv: list[str] | None = None) -> int:
    """The ``jobs/pretrain.py`` driver: :data:`wsiscale.commands.training.PRETRAIN` run as a Ray job."""
    from wsiscale.commands.runner import job_main
    from wsiscale.commands.training import PRETRAIN

    return job_main(PRETRAIN, argv, "jobs/pretrain.py", "jobs/configs/pretrain.yaml",
                    "DINO/SLPD pretraining of the region or patch encoder on Ray Train.")


if __name__ == "__main__":
    sys.exit(main())

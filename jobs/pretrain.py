"""`ray job submit` entrypoint: DINO/SLPD pretraining of the region or patch encoder on Ray Train.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pretrain.py --config jobs/configs/pretrain.yaml

Input: ``--embeddings`` (default ``<output>/embeddings-regions``), a
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

import wsiscale  # noqa: F401  (first: cuCIM before anything that may import torch)

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from wsiscale.cli import job_parser

    p = job_parser("jobs/pretrain.py", "DINO/SLPD pretraining of the region or patch encoder on Ray Train.",
                   "jobs/configs/pretrain.yaml", "pretrain.num_workers=[2,8]")
    p.add_argument("--embeddings", help="regions-mode embedding run (default: <output>/embeddings-regions)")
    p.add_argument("--tiles", help="tiling run with pixels: pretrain the patch encoder (sets pretrain.level=patch)")
    p.add_argument("--out", help="output directory (default: <output>/pretrain)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    from wsiscale.cli import print_pretrain_result, run_job
    from wsiscale.config import ConfigError
    from wsiscale.demo import ray_session
    from wsiscale.io.uri import join_uri
    from wsiscale.pretrain.run import pretrain_source, run_pretraining

    args = build_parser().parse_args(argv)

    def work(cfg):
        source = pretrain_source(cfg, args.tiles, args.embeddings)
        with ray_session(cfg):
            return run_pretraining(cfg, source, args.out or join_uri(cfg.output, "pretrain"))

    return run_job(args, work, print_pretrain_result, (FileNotFoundError, ConfigError))


if __name__ == "__main__":
    sys.exit(main())

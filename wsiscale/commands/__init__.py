"""Every stage's front door, written once: the CLI (:mod:`wsiscale.cli`), ``jobs/<stage>.py`` and the
pipeline (:mod:`wsiscale.pipeline`) all call these :class:`~wsiscale.commands.command.Command` objects.

=====================  ==========================  ============================================
command                job                         writes
=====================  ==========================  ============================================
``info``               -                           nothing (a slide's metadata on stdout)
``synth``              -                           generated slides, truth, ``manifest.parquet``
``manifest``           ``jobs/tile.py --prefix``   ``<output>/manifest.parquet``
``tile``               ``jobs/tile.py``            ``<output>/tiles``
``embed``              ``jobs/embed.py``           ``<output>/embeddings`` (or ``regions``)
``cluster``            ``jobs/cluster.py``         ``<output>/clusters``
``index build``        ``jobs/index.py``           ``<output>/slide-index``
``retrieve``           -                           nothing (the nearest slides on stdout)
``pretrain``           ``jobs/pretrain.py``        ``<output>/pretrain`` (checkpoints, encoder)
``train-mil``          ``jobs/train_mil.py``       ``<output>/mil-<method>``
``gigassl train/embed``  ``jobs/gigassl.py``       ``<output>/gigassl`` (model, vectors)
``train-five``         ``jobs/five.py``            ``<output>/five``
``eval five``          ``jobs/five.py``            ``<model>/five_eval.json``
``eval linear-probe``  ``jobs/eval_linear_probe.py``  ``<output>/linear-probe``
``report``             ``jobs/pipeline.py``        ``<run>/report.html``
``pipeline``           ``jobs/pipeline.py``        every stage's run under ``<output>``
``demo``               ``jobs/demo.py``            ``./wsiscale-demo``
=====================  ==========================  ============================================
"""

from __future__ import annotations

from wsiscale.commands.command import Command

__all__ = ["Command"]

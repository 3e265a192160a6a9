"""Periodic evaluation of a pretraining run: slide-level linear probe and kNN on held-out slides.

Every ``pretrain.eval_every`` epochs (and after the last one), rank 0 embeds
the labelled slides with the current teacher on Ray Data actors
(:class:`SlideEmbedder`: one slide per call; the slide vector is the mean of
its regions' - or tiles' - backbone features, the "mean-region" slide
representation of HIPT's kNN baseline), splits them into probe-training and
held-out slides (stratified, ``pretrain.eval_holdout``, seeded: the same split
every time) and reports :func:`wsiscale.eval.probe.linear_probe` and
:func:`~wsiscale.eval.probe.knn_probe` on the held-out slides:
``probe_auc``, ``probe_accuracy``, ``knn_auc``, ``knn_accuracy``.

Labels come from ``pretrain.eval_labels``: a CSV or Parquet with ``slide_id``
and ``label`` (any values; e.g. the manifest written with ``--labels``, or
the synthetic cohort's ``cohort.parquet``). Unlabelled slides are left out.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from wsiscale.pretrain.data import RegionFile, slide_items

log = logging.getLogger(__name__)


class SlideEmbedder:
    """Ray Data actor body: a slide's mean teacher feature ``[embed_dim]``."""

    def __init__(self, teacher_state: Any, pretrain: dict, shape: list[int], storage: Any = None) -> None:
        from wsiscale.pretrain.features import TeacherFeatures

        self.teacher = TeacherFeatures(teacher_state, pretrain, shape)
        self.shape, self.storage, self.level = shape, storage, self.teacher.p.level

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from wsiscale.pretrain.features import read_slide_items

        slides, feats = [], []
        for slide, uris in zip(batch["slide"], batch["uris"]):
            f = self.teacher(read_slide_items(list(uris), self.storage, self.shape, self.level))
            slides.append(int(slide))
            feats.append(f.mean(0))
        return {"slide": np.array(slides, np.int64), "feature": np.stack(feats).astype(np.float32)}


def slide_features(files: list[RegionFile], slides: list[int], shape: list[int], teacher_state: Any,
                   pretrain: dict, storage: Any = None, actors: int = 1, cpus: float = 1.0) -> np.ndarray:
    """``[len(slides), embed_dim]`` mean teacher features of ``slides`` (indices into the run's slide order)."""
    import ray

    items = slide_items(files, set(slides))
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 64 * actors)))
    ref = teacher_state if not isinstance(teacher_state, dict) else ray.put(teacher_state)
    out = ds.map_batches(SlideEmbedder, batch_size=1, concurrency=actors, num_cpus=cpus,
                         fn_constructor_kwargs=dict(teacher_state=ref, pretrain=pretrain, shape=shape, storage=storage))
    got: dict[int, np.ndarray] = {}
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        got.update(zip(b["slide"].tolist(), b["feature"]))
    return np.stack([got[s] for s in slides])


def read_eval_labels(uri: str, storage: Any = None) -> dict[str, Any]:
    """``{slide_id: label}`` of a ``pretrain.eval_labels`` table (rows without a label left out)."""
    from wsiscale.config import ConfigError
    from wsiscale.io.manifest import read_table

    t = read_table(uri, storage, "pretrain.eval_labels", string_columns=("slide_id",))
    if "slide_id" not in t.column_names or "label" not in t.column_names:
        raise ConfigError(f"pretrain.eval_labels {uri} needs 'slide_id' and 'label' columns, has {t.column_names}")
    return {str(s): v for s, v in zip(t.column("slide_id").to_pylist(), t.column("label").to_pylist()) if v is not None}


def labels_allow_holdout(uri: str, storage: Any = None) -> bool:
    """Whether ``uri`` can serve as ``pretrain.eval_labels``: 2+ classes, each with 2+ labelled slides.

    Callers that turn the held-out evaluation on by themselves (the demo, jobs/pipeline.py) ask this
    first; an unusable table (missing, no ``label`` column, too few slides) answers False.
    """
    from collections import Counter

    from wsiscale.config import ConfigError

    try:
        counts = Counter(read_eval_labels(uri, storage).values())
    except (ConfigError, FileNotFoundError, ValueError):
        return False
    return len(counts) >= 2 and min(counts.values()) >= 2


def load_eval_labels(uri: str, slide_ids: list[str], storage: Any = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(slides, labels, class names)``: run slide indices with a label, integer labels, the label values."""
    from wsiscale.config import ConfigError

    table = read_eval_labels(uri, storage)
    pos = {sid: i for i, sid in enumerate(slide_ids)}
    found = [(pos[s], v) for s, v in table.items() if s in pos]
    if not found:
        raise ConfigError(f"pretrain.eval_labels {uri}: none of its slide ids is in the pretraining run "
                          f"(e.g. {slide_ids[:3]})")
    found.sort()
    names = sorted({str(v) for _, v in found})
    labels = np.array([names.index(str(v)) for _, v in found], np.int64)
    return np.array([i for i, _ in found], np.int64), labels, names


def check_holdout(labels: np.ndarray, holdout: float, seed: int, source: str = "pretrain.eval_labels") -> None:
    """Refuse (before training) labels too few for a held-out split with >= 2 training classes."""
    from wsiscale.config import ConfigError
    from wsiscale.eval.probe import holdout_split

    train, test = holdout_split(labels, holdout, seed)
    if len(test) == 0 or len(np.unique(labels[train])) < 2:
        counts = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
        raise ConfigError(f"{source}: {len(labels)} labelled slides (per class: {counts}) are too few to hold out "
                          f"{holdout:g} of each class and train a probe: label at least 2 slides in each of 2 classes, "
                          "or unset pretrain.eval_labels")


def evaluate(files: list[RegionFile], shape: list[int], teacher_state: Any, pretrain: Any, slides: np.ndarray,
             labels: np.ndarray, storage: Any = None) -> dict[str, float]:
    """Linear probe and kNN of the teacher's mean slide features on the held-out labelled slides."""
    from wsiscale.eval.probe import holdout_split, knn_probe, linear_probe

    p = pretrain
    check_holdout(labels, p.eval_holdout, p.seed)
    train, test = holdout_split(labels, p.eval_holdout, p.seed)
    x = slide_features(files, slides.tolist(), shape, teacher_state, p.model_dump(mode="json"), storage,
                       actors=p.cluster_actors, cpus=p.cluster_cpus)
    lin = linear_probe(x[train], labels[train], x[test], labels[test])
    knn = knn_probe(x[train], labels[train], x[test], labels[test], k=p.eval_knn)
    return {"probe_auc": lin["auc"], "probe_accuracy": lin["accuracy"], "knn_auc": knn["auc"],
            "knn_accuracy": knn["accuracy"], "eval_slides": int(len(test))}

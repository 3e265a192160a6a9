"""FiVE's training loss: slides matched with their report texts by scaled cosine similarity.

Following ls1rius/WSI_FiVE (``FiVE.forward``): the step's texts are
deduplicated (slides whose augmented reports read the same share one text, so
a slide is never pushed away from its own description when a neighbour has
it too); ``logits[i, k] = s cos(slide_i, text_k)`` over the ``K`` distinct texts,
and the loss is the cross-entropy of each slide's own text, averaged over the
slides. With class descriptions as the texts, the same function is the
few-shot fine-tuning loss.

Across Ray Train workers (:func:`distributed_five_loss`) every worker gathers
the step's slide and text features (``all_gather`` with autograd); each worker
scores its own slides against all distinct texts, divided by the global batch.
The workers' losses sum to the single-process loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dedupe_texts(texts: list[str]) -> tuple[list[int], list[int]]:
    """``(first, target)``: index of each distinct text's first occurrence, and each text's distinct id."""
    seen: dict[str, int] = {}
    first, target = [], []
    for i, t in enumerate(texts):
        if t not in seen:
            seen[t] = len(first)
            first.append(i)
        target.append(seen[t])
    return first, target


def matching_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``[b, K]`` scaled similarities against each slide's text id ``[b]``."""
    return F.cross_entropy(logits, target, reduction=reduction)


def five_loss(model, slide: torch.Tensor, text: torch.Tensor, texts: list[str]) -> torch.Tensor:
    """Single-process loss: ``slide [b, D]``, ``text [b, D]`` (row i: slide i's text), ``texts`` the b strings."""
    first, target = dedupe_texts(texts)
    logits = model.similarity(slide, text[first])
    return matching_loss(logits, torch.as_tensor(target, device=slide.device))


def distributed_five_loss(model, slide: torch.Tensor, text: torch.Tensor, texts: list[str], offset: int,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """This worker's share of the global loss.

    ``slide``, ``text`` ``[n, D]``: this worker's slides, global rows ``offset .. offset + n``;
    ``texts``: the step's texts of *all* slides in global order (every worker derives them from
    the same seeds). Every worker must hold the same ``n``. Outside a process group it is
    :func:`five_loss` (with ``offset`` 0). ``valid [n]`` False drops a slide's row (an unreadable
    slide: its text still competes); the sum is divided by the global batch either way.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        from torch.distributed.nn.functional import all_gather

        all_text = torch.cat(all_gather(text.contiguous()))
    else:
        all_text = text
    first, target = dedupe_texts(texts)
    n = slide.shape[0]
    logits = model.similarity(slide, all_text[first])
    own = torch.as_tensor(target[offset:offset + n], device=slide.device)
    rows = matching_loss(logits, own, reduction="none")
    if valid is not None:
        rows = rows * valid.to(rows.dtype)
    return rows.sum() / len(texts)

"""Synthetic pathology reports that describe the generated tissue.

Reports are free text assembled from fine-grained fields (the kind FiVE,
Li et al. CVPR 2024, extracts from real reports): tissue type, growth
pattern, nuclear features, necrosis, inflammation and stroma/fat. Every
field is derived from the slide's ground truth, with synonyms and field
order drawn at random so text is not a constant per class.
"""

from __future__ import annotations

import numpy as np

REPORT_FIELDS = ("tissue type", "growth pattern", "nuclear features", "necrosis", "inflammation", "stroma")

_DIAGNOSIS = {
    0: ["benign tissue", "no evidence of malignancy", "benign glandular tissue"],
    1: ["adenocarcinoma", "invasive glandular carcinoma", "gland-forming carcinoma"],
    2: ["solid carcinoma", "poorly differentiated solid carcinoma", "carcinoma with solid sheets"],
}
_PATTERN = {
    0: ["regular glands with single-layered epithelium", "orderly glandular architecture"],
    1: ["crowded irregular glands with small lumens", "back-to-back glandular structures"],
    2: ["solid sheets of polygonal cells with keratin pearls", "solid nests without gland formation"],
}
_NUCLEI = {
    0: ["small uniform basal nuclei", "bland round nuclei"],
    1: ["enlarged vesicular nuclei with nucleoli", "pleomorphic nuclei with prominent nucleoli"],
    2: ["large pleomorphic nuclei in abundant eosinophilic cytoplasm", "marked nuclear pleomorphism"],
}


def _level(fraction: float, none: float, heavy: float) -> str:
    if fraction < none:
        return "absent"
    return "extensive" if fraction >= heavy else "focal"


def report_fields(class_fractions: dict[str, float], label: int, rng: np.random.Generator) -> dict[str, str]:
    """The six fine-grained fields of a slide's report."""
    necrosis = _level(class_fractions.get("necrosis", 0.0), 0.03, 0.15)
    inflammation = _level(class_fractions.get("lymphocytes", 0.0), 0.05, 0.2)
    fat = class_fractions.get("fat", 0.0)
    stroma = class_fractions.get("stroma", 0.0)
    return {
        "tissue type": str(rng.choice(_DIAGNOSIS[label])),
        "growth pattern": str(rng.choice(_PATTERN[label])),
        "nuclear features": str(rng.choice(_NUCLEI[label])),
        "necrosis": f"{necrosis} necrosis",
        "inflammation": f"{inflammation} lymphocytic infiltrate",
        "stroma": f"{'abundant' if stroma > 0.3 else 'moderate'} fibrous stroma" + (" with adipose tissue" if fat > 0.08 else ""),
    }


def write_report(class_fractions: dict[str, float], label: int, rng: np.random.Generator) -> str:
    """Free-text report: the fields as sentences in a random order."""
    fields = report_fields(class_fractions, label, rng)
    order = rng.permutation(len(REPORT_FIELDS))
    sentences = [f"{REPORT_FIELDS[i].capitalize()}: {fields[REPORT_FIELDS[i]]}." for i in order]
    return " ".join(sentences)

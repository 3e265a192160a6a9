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


# Sentence templates per field: "{v}" is the field value. Headed ("Field: v.") and narrative forms mix,
# as in real reports; the rule extractor (wsiscale.five.extract) inverts them.
TEMPLATES: dict[str, list[str]] = {
    "tissue type": ["Diagnosis: {v}.", "Final diagnosis: {v}.", "The sections show {v}.", "Tissue type: {v}.",
                    "Microscopy is consistent with {v}."],
    "growth pattern": ["Growth pattern: {v}.", "Architecture: {v}.", "The architecture shows {v}.",
                       "Low power shows {v}."],
    "nuclear features": ["Nuclear features: {v}.", "Nuclei: {v}.", "Cytology shows {v}.",
                         "At high power there are {v}."],
    "necrosis": ["Necrosis: {level}.", "{Level} necrosis is present.", "There is {level} necrosis."],
    "inflammation": ["Inflammation: {v}.", "There is {v}.", "The background shows {v}."],
    "stroma": ["Stroma: {v}.", "The background contains {v}.", "There is {v}."],
}
NO_NECROSIS = ["No necrosis is identified.", "Necrosis is not seen.", "Necrosis: absent."]
NO_INFLAMMATION = ["No significant lymphocytic infiltrate.", "Inflammation: absent lymphocytic infiltrate."]
DISTRACTORS = ["Specimen received in formalin, labelled with the patient's name.",
               "Sections were examined at multiple levels.", "Clinical history: mass on imaging.",
               "Immunohistochemistry is pending and will be reported separately.",
               "Margins cannot be assessed on this specimen.", "Correlation with imaging is recommended."]


def field_sentence(name: str, value: str, rng: np.random.Generator) -> str:
    """One sentence stating ``value`` for field ``name`` (wording drawn from :data:`TEMPLATES`)."""
    if name == "necrosis":
        level = value.removesuffix(" necrosis")
        if level == "absent":
            return str(rng.choice(NO_NECROSIS))
        t = str(rng.choice(TEMPLATES[name]))
        return t.format(level=level, Level=level.capitalize())
    if name == "inflammation" and value.startswith("absent"):
        return str(rng.choice(NO_INFLAMMATION))
    t = str(rng.choice(TEMPLATES[name]))
    text = t.format(v=value)
    return text[0].upper() + text[1:]


def compose_report(class_fractions: dict[str, float], label: int, rng: np.random.Generator,
                   omit: float = 0.1, distractors: float = 0.5) -> tuple[str, dict[str, str | None]]:
    """``(report text, {field: stated value or None})``: the report and what it actually states.

    Each field becomes one sentence (template and order at random); a field
    other than the diagnosis is left out with probability ``omit`` (its
    stated value is then None) and unrelated sentences (specimen handling,
    history) are mixed in with probability ``distractors`` each (at most two).
    """
    fields = report_fields(class_fractions, label, rng)
    stated: dict[str, str | None] = {}
    sentences = []
    for i in rng.permutation(len(REPORT_FIELDS)):
        name = REPORT_FIELDS[i]
        if name != "tissue type" and rng.random() < omit:
            stated[name] = None
            continue
        stated[name] = fields[name]
        sentences.append(field_sentence(name, fields[name], rng))
    for _ in range(2):
        if rng.random() < distractors:
            sentences.insert(int(rng.integers(0, len(sentences) + 1)), str(rng.choice(DISTRACTORS)))
    return " ".join(sentences), {f: stated[f] for f in REPORT_FIELDS}


def write_report(class_fractions: dict[str, float], label: int, rng: np.random.Generator,
                 omit: float = 0.1, distractors: float = 0.5) -> str:
    """Free-text report of the slide's fields, with noise (see :func:`compose_report`)."""
    return compose_report(class_fractions, label, rng, omit, distractors)[0]

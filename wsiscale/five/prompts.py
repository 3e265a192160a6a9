"""Built-in class descriptions for the synthetic generator's slide labels (zero-/few-shot texts).

Written the way a user would describe the classes, in the field format FiVE
trains on, with wording that is *not* copied from the generator's report
vocabulary: zero-shot accuracy then measures how well the slide features
landed in the text encoder's semantic space, not string matching.
"""

from __future__ import annotations

SYNTHETIC_CLASS_DESCRIPTIONS: dict[str, str] = {
    "normal": "tissue type: benign tissue without malignancy; growth pattern: normal glands lined by a single "
              "layer of epithelium; nuclear features: small regular nuclei",
    "tumour_glandular": "tissue type: adenocarcinoma; growth pattern: irregular crowded malignant glands; nuclear "
                        "features: enlarged nuclei with prominent nucleoli; inflammation: lymphocytic infiltrate",
    "tumour_solid": "tissue type: poorly differentiated carcinoma growing in solid sheets; growth pattern: solid "
                    "nests of tumour cells without glands; nuclear features: marked pleomorphism; necrosis: "
                    "extensive necrosis",
}

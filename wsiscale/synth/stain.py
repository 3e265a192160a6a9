"""Beer-Lambert H&E stain model used to colour synthetic tissue.

Tissue textures are rendered as stain *concentrations* (haematoxylin, eosin),
then turned into RGB with the optical-density model of Ruifrok & Johnston,
"Quantification of histochemical staining by color deconvolution", Anal Quant
Cytol Histol 2001: ``RGB = 255 * exp(-(c_H * OD_H + c_E * OD_E))``.

Because a slide's stain vectors are drawn per slide (stain variation between
labs/scanners is the main nuisance factor in real archives), the mapping is
tabulated once per slide as a 256 x 256 look-up table indexed by the two
quantised concentrations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Optical density vectors (R, G, B) from Ruifrok & Johnston (2001), table 1.
HAEMATOXYLIN_OD = np.array([0.650, 0.704, 0.286])
EOSIN_OD = np.array([0.072, 0.990, 0.105])

#: Concentration that the uint8 value 255 stands for (OD units).
MAX_CONCENTRATION = 2.0


@dataclass(frozen=True)
class Stain:
    """Per-slide stain appearance.

    Attributes:
        haematoxylin: OD vector of haematoxylin, shape ``[3]``.
        eosin: OD vector of eosin, shape ``[3]``.
        intensity: global multiplier of both concentrations (staining strength).
    """

    haematoxylin: np.ndarray
    eosin: np.ndarray
    intensity: float = 1.0

    @staticmethod
    def reference() -> "Stain":
        return Stain(HAEMATOXYLIN_OD.copy(), EOSIN_OD.copy(), 1.0)

    @staticmethod
    def random(rng: np.random.Generator, strength: float = 1.0) -> "Stain":
        """A plausible lab-to-lab variation of the reference stain.

        ``strength`` scales the perturbation (0 gives the reference stain).
        """
        h = HAEMATOXYLIN_OD * np.exp(rng.normal(0.0, 0.12 * strength, 3))
        e = EOSIN_OD * np.exp(rng.normal(0.0, 0.12 * strength, 3))
        intensity = float(np.exp(rng.normal(0.0, 0.12 * strength)))
        return Stain(h / np.linalg.norm(h), e / np.linalg.norm(e), intensity)

    def lookup_table(self) -> np.ndarray:
        """RGB for every pair of quantised concentrations.

        Returns:
            ``[256 * 256, 3]`` uint8 table; row ``h * 256 + e`` is the colour of
            concentrations ``(h, e) / 255 * MAX_CONCENTRATION``.
        """
        c = np.arange(256, dtype=np.float64) / 255.0 * MAX_CONCENTRATION * self.intensity
        od = c[:, None, None] * self.haematoxylin + c[None, :, None] * self.eosin
        rgb = 255.0 * np.exp(-od)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(-1, 3)

    def colourise(self, concentrations: np.ndarray) -> np.ndarray:
        """Map ``[..., 2]`` uint8 concentrations (H, E) to ``[..., 3]`` uint8 RGB."""
        lut = self.lookup_table()
        index = concentrations[..., 0].astype(np.int32) * 256 + concentrations[..., 1]
        return lut[index]

"""Microns-per-pixel from slide metadata.

Readers disagree on resolution (cuCIM reported spacing 1.0 for an Aperio SVS
whose ImageDescription says ``MPP = 0.25``), so wsiscale parses it itself,
in this order: an explicit per-slide override, the Aperio ImageDescription,
OME-XML ``PhysicalSizeX/Y``, TIFF ``X/YResolution`` with a metric/inch unit,
then the backend's ``openslide.mpp-x/y``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_OME_SIZE = re.compile(r'PhysicalSize([XY])="([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"')
_OME_UNIT = re.compile(r'PhysicalSize([XY])Unit="([^"]+)"')
_UNIT_TO_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "\u00b5m": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}

#: Plausible range of slide resolutions (um/px); outside it the tag is a default, not a measurement.
MPP_RANGE = (0.01, 50.0)


def _plausible(v: float | None) -> float | None:
    if v is None or not (MPP_RANGE[0] <= v <= MPP_RANGE[1]):
        return None
    return float(v)


def mpp_from_aperio(description: str | None) -> float | None:
    """``MPP = 0.4990`` in an Aperio ImageDescription."""
    if not description or not description.startswith("Aperio"):
        return None
    m = _APERIO_MPP.search(description)
    return _plausible(float(m.group(1))) if m else None


def mpp_from_ome(description: str | None) -> tuple[float, float] | None:
    """``PhysicalSizeX/Y`` (with units) of the first OME-XML pixels element."""
    if not description or "<OME" not in description:
        return None
    sizes = {}
    for axis, value in _OME_SIZE.findall(description):
        sizes.setdefault(axis, float(value))
    units = {axis: unit for axis, unit in _OME_UNIT.findall(description)}
    if "X" not in sizes:
        return None
    out = []
    for axis in ("X", "Y"):
        v = sizes.get(axis, sizes["X"]) * _UNIT_TO_UM.get(units.get(axis, "µm"), 1.0)
        if _plausible(v) is None:
            return None
        out.append(v)
    return out[0], out[1]


def mpp_from_resolution(x_res: float | None, y_res: float | None, unit: int | str | None) -> tuple[float, float] | None:
    """TIFF XResolution/YResolution (pixels per unit); unit 2 = inch, 3 = centimetre, 1 = none."""
    if not x_res or not y_res:
        return None
    name = str(unit).lower()
    if name in {"3", "centimeter", "resunit.centimeter"}:
        scale = 1e4
    elif name in {"2", "inch", "resunit.inch"}:
        scale = 25400.0
    else:
        return None
    x, y = _plausible(scale / x_res), _plausible(scale / y_res)
    if x is None or y is None:
        return None
    return x, y


def mpp_from_properties(props: Mapping[str, str]) -> tuple[float, float] | None:
    """``openslide.mpp-x/y`` (or tiffslide's copy) from a backend's property map."""
    for px, py in (("openslide.mpp-x", "openslide.mpp-y"), ("tiffslide.mpp-x", "tiffslide.mpp-y")):
        try:
            x = _plausible(float(props[px]))
            y = _plausible(float(props.get(py, props[px])))
        except (KeyError, TypeError, ValueError):
            continue
        if x is not None and y is not None:
            return x, y
    return None

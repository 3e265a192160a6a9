"""wsiscale: self-supervised and weakly supervised whole-slide image learning at archive scale, on Ray."""

from wsiscale.io.cucim_guard import preload as _preload_cucim

# cuCIM must be imported before CUDA torch (see wsiscale.io.cucim_guard); doing it
# here makes `import wsiscale` the one place that guarantees the safe order.
_preload_cucim()

__version__ = "0.1.0"

"""Where each stage's run lives under a run's output URI: every directory named here, once.

The CLI's defaults (``wsiscale tile`` without ``--out`` writes ``<output>/tiles``), the ``jobs/``
drivers and the pipeline all take their paths from :class:`RunLayout`, so a stage always finds
the run the previous stage wrote.
"""

from __future__ import annotations

from wsiscale.io.uri import join_uri, normalize_uri


class RunLayout:
    """The runs under ``output`` (any URI)."""

    def __init__(self, output: str) -> None:
        self.output = normalize_uri(output)

    def _at(self, name: str) -> str:
        return join_uri(self.output, name)

    @property
    def manifest(self) -> str:
        """The slide manifest (``wsiscale manifest``, ``jobs/tile.py --prefix``)."""
        return self._at("manifest.parquet")

    @property
    def slides(self) -> str:
        """Generated slides (``jobs/pipeline.py --synth``)."""
        return self._at("slides")

    @property
    def tiles(self) -> str:
        return self._at("tiles")

    @property
    def embeddings(self) -> str:
        """Tile embeddings (``embed.mode=tiles``)."""
        return self._at("embeddings")

    @property
    def regions(self) -> str:
        """Region grids of patch embeddings (``embed.mode=regions``): SLPD's input."""
        return self._at("regions")

    @property
    def pretrain(self) -> str:
        return self._at("pretrain")

    @property
    def features(self) -> str:
        """The pretrained region encoder's feature of every region."""
        return self._at("region-features")

    @property
    def clusters(self) -> str:
        return self._at("clusters")

    @property
    def slide_index(self) -> str:
        return self._at("slide-index")

    @property
    def eval(self) -> str:
        return self._at("eval")

    @property
    def linear_probe(self) -> str:
        return self._at("linear-probe")

    @property
    def gigassl(self) -> str:
        return self._at("gigassl")

    @property
    def five(self) -> str:
        return self._at("five")

    def mil(self, method: str) -> str:
        return self._at(f"mil-{method}")

"""The run-directory contract every stage reads and writes.

- :mod:`wsiscale.runs.layout`: where each stage's run lives under ``cfg.output`` (each name written once);
- :mod:`wsiscale.runs.config_file`: the resolved config saved beside every output.
"""

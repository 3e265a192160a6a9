"""Evaluation of learned representations: linear probes and kNN on slide-level vectors."""

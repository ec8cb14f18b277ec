"""Drift monitoring: compare what the model sees now with what it was trained on.

``ihcflow drift`` (see docs/monitoring.md) builds an Evidently report from

- :mod:`ihcflow.monitoring.sources`: the reference (the training split's rows of
  ``reports/data/features.csv``, with the registered model's embeddings and predictions of the
  training images) and the current data (prediction logs written by the server, or a folder of
  new images measured the same way);
- :mod:`ihcflow.monitoring.drift`: the per-column tests, the embedding test, the dataset
  verdict and time windows;
- :mod:`ihcflow.monitoring.report`: ``drift.html``, ``drift.json``, ``summary.md`` and, with
  windows, ``windows.csv`` and ``drift_share.png``.

Evidently is imported lazily (it is slow to import and part of the ``pipeline`` extra only).
"""

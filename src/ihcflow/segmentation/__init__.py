"""Nuclei segmentation and the Ki-67 index: the second task of the workflow.

Modules, in the order data flows through them:

- ``labels``: the annotation contract (instance masks, class maps, ``classes.csv``) and the
  training targets derived from it.
- ``layout``: the ``images/`` + ``masks/`` folder layout and its validation.
- ``qupath`` and ``importers``: bring in a masks folder or QuPath GeoJSON exports.
- ``sample``: the built-in synthetic sample (nuclei with instance masks and classes).
- ``tiling`` and ``instances``: sliding-window inference (any runner: torch or ONNX Runtime)
  and the probabilities -> nuclei post-processing. No torch: the server uses them.
- ``metrics`` and ``overlay``: pixel Dice/IoU, AJI, PQ, F1, the Ki-67 index error; contours.
- ``datamodule``, ``module``, ``predictor``, ``fit``: training with Lightning, export to ONNX.
"""

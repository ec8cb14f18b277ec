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
- ``params``: the ``segmentation`` params section as typed configs.
- ``prepare``: the seg_prepare and seg_split stages' logic (checked tiles, the split).
- ``datamodule``, ``module``, ``predictor``, ``fit``: training with Lightning (the classifier's
  loop, ``training.lightning``), export to ONNX.
- ``evaluation``: the seg_evaluate stage (post-processing chosen on val, test metrics).
- ``model_format`` and ``register``: the registered model (read by the server without torch)
  and the seg_register stage (the classifier's gate, versioning and swap).
"""

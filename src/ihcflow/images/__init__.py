"""Images in the pipeline's one array convention, (H, W, 3) uint8 RGB.

- :mod:`~ihcflow.images.codec`: files <-> arrays (decode any supported format, probe a header,
  encode PNG);
- :mod:`~ihcflow.images.ops`: the operations (denoise, brightness/contrast, stain normalisation,
  resize), each with explicit parameters;
- :mod:`~ihcflow.images.features`: the cheap per-image features drift monitoring compares;
- :mod:`~ihcflow.images.prepare`: one file to the model's input, as the ``preprocess`` params
  say (the stage, the server and drift monitoring all call it).

Import the module you need: this package imports nothing, so a stage that only decodes does not
depend on the operations.
"""

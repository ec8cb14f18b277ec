"""Registration: the gate, and the registered model set in ``models/``.

- :mod:`~ihcflow.registry.gate`: the ``gate`` params, each metric against its threshold, the
  gate table;
- :mod:`~ihcflow.registry.register`: gate, verify, export and describe a candidate
  (``model.json``), then install it;
- :mod:`~ihcflow.registry.card`: ``MODEL_CARD.md``;
- :mod:`~ihcflow.registry.install`: the set in ``models/``, its versions, the atomic swap.

The files' format is :mod:`ihcflow.model_format`. Import the module you need: this package
imports nothing (the PR report reads the gate without the export's dependencies).
"""

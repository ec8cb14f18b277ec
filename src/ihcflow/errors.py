"""The one base of the errors a stage expects: :class:`PipelineError`.

Every stage family raises its own subclass for an input it cannot use (``DatasetError``
validate, ``PreprocessError`` preprocess, ``SplitError`` split, ``TrainError`` train,
``EvaluationError`` evaluate, ``RegisterError`` register, ``DriftInputError`` drift), and the
shared readers raise theirs (``ConfigError`` params, ``TableError`` tables,
``CheckpointError`` checkpoints, ``ModelFormatError`` the registered model). A stage's
``main`` prints any of them as one line naming the file or key, and exits 1; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(ValueError):
    """An input that cannot be used; the message names the file or key and what is wrong."""

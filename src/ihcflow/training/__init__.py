"""Training: the data module, the LightningModule, the networks, the baselines, checkpoints and
the run itself (``fit``), plus rebuilding a trained model from its checkpoint (``predictor``)."""

from ihcflow.errors import PipelineError


class TrainError(PipelineError):
    """The train stage cannot run: the split table or an image it names cannot be used, or the
    params ask for something this machine or install cannot do."""

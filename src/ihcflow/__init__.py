"""ihcflow: reproducible IHC image classification with DVC, Hydra and Lightning."""

__version__ = "0.1.0"

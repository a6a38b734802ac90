"""detrforge: fine-tune, gate and ship RF-DETR object detectors."""

__version__ = "0.1.0"

__all__ = ["__version__"]

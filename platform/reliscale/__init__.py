"""reliscale: scaling studies of model reliability on Ray, DeepSpeed and MLflow."""

__version__ = "0.1.0"

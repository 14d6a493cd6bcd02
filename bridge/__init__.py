"""ftbridge: mirror fine-tuning jobs into Weights & Biases."""

__version__ = "0.1.0"

"""Datasets with ground truth, and the bundled sample images."""

from .samples import SAMPLES_SEED, list_samples, load_sample
from .shapes import CLASSES, Shapes

__all__ = ["CLASSES", "SAMPLES_SEED", "Shapes", "list_samples", "load_sample"]

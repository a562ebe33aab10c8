"""Datasets with ground truth, and the bundled sample images."""

from .samples import SAMPLES_SEED, list_samples, load_sample
from .shapes import CLASSES, SCENES, TEXTURES, Shapes
from .views import EachClass, each_class

__all__ = ["CLASSES", "SAMPLES_SEED", "SCENES", "TEXTURES", "EachClass", "Shapes", "each_class", "list_samples",
           "load_sample"]

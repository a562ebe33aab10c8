"""Models camwidgets can explain out of the box: the embedded demo model and torchvision's."""

from .demo import DEMO_MEAN, DEMO_SIZE, DEMO_STD, DemoNet, demo_preprocess, load_demo_model
from .zoo import WeightsUnavailableError, classification_models, load_torchvision

__all__ = [
    "DEMO_MEAN",
    "DEMO_SIZE",
    "DEMO_STD",
    "DemoNet",
    "WeightsUnavailableError",
    "classification_models",
    "demo_preprocess",
    "load_demo_model",
    "load_torchvision",
]

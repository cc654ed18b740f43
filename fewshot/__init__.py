"""fewshot: metric-trained encoders and prototype / nearest-neighbour / least-squares heads.

The everyday entry points::

    from fewshot import train, TrainConfig, load_encoder, adapt, load_classifier
"""

from .adapt import adapt, update
from .checkpoint import load_encoder
from .classifier import FewShotClassifier, load_classifier
from .encoders import build_encoder
from .errors import FewShotError
from .train import TrainConfig, train

__all__ = ["FewShotError", "build_encoder", "load_encoder", "TrainConfig", "train", "adapt", "update",
           "FewShotClassifier", "load_classifier"]
__version__ = "0.1.0"

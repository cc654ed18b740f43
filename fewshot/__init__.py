"""fewshot: metric-trained encoders and prototype / nearest-neighbour / least-squares heads.

The library API, one import away::

    import fewshot
    data = fewshot.load_data("glyphs")
    run = fewshot.train(fewshot.TrainConfig(data="glyphs", epochs=1), out_dir="runs/demo")
    result = fewshot.evaluate(run.best_path, fewshot.load_data("glyphs?split=novel"))

The subpackages follow the data flow: ``episodes`` (images in, episodes out), then
``fewshot.models`` (encoders, losses, checkpoints), ``fewshot.training``, ``fewshot.heads``,
``fewshot.evaluation``, ``fewshot.adaptation`` and ``fewshot.experiments`` (compare, ablate).
"""

from episodes import load_data
from fewshot.adaptation.adapt import adapt, update
from fewshot.adaptation.classifier import FewShotClassifier, load_classifier
from fewshot.errors import FewShotError
from fewshot.evaluation.evaluate import EvalResult, evaluate
from fewshot.experiments.compare import CompareConfig, compare
from fewshot.heads import get_head
from fewshot.models.checkpoint import load_encoder
from fewshot.models.encoders import build_encoder
from fewshot.training.config import TrainConfig, TrainResult
from fewshot.training.trainer import train

__all__ = ["FewShotError", "load_data", "build_encoder", "load_encoder", "TrainConfig", "TrainResult",
           "train", "evaluate", "EvalResult", "get_head", "compare", "CompareConfig", "adapt", "update",
           "FewShotClassifier", "load_classifier"]
__version__ = "0.1.0"

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

from episodes import EpisodeProtocol, load_data
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
from fewshot.version import __version__ as __version__

__all__ = [
    "load_data", "EpisodeProtocol",                                   # data (from the episodes package)
    "build_encoder", "load_encoder",                                  # models
    "TrainConfig", "TrainResult", "train",                            # training
    "get_head", "evaluate", "EvalResult",                             # heads and evaluation
    "adapt", "update", "FewShotClassifier", "load_classifier",        # adaptation
    "compare", "CompareConfig",                                       # experiments
    "FewShotError",
]

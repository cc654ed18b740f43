"""fewshot: metric-trained encoders and prototype / nearest-neighbour / least-squares heads."""

from .errors import FewShotError

__all__ = ["FewShotError"]
__version__ = "0.1.0"

"""episodes: the data side of fewshot. Images in, episodes out; knows nothing about models."""

from .errors import DatasetError
from .imageset import ImageSet
from .manifest import load_manifest, save_manifest
from .sampling import Episodes, EpisodeSpec, sample_episodes

__all__ = ["DatasetError", "ImageSet", "Episodes", "EpisodeSpec", "sample_episodes",
           "save_manifest", "load_manifest"]

try:  # readers and data specs land module by module
    from .specs import load_data, parse_spec  # noqa: F401
    __all__ += ["load_data", "parse_spec"]
except ImportError:  # pragma: no cover
    pass

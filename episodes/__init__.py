"""episodes: the data side of fewshot. Images in, episodes out; knows nothing about models."""

from .decode import decode_image
from .errors import DatasetError
from .imageset import ImageSet
from .manifest import load_manifest, save_manifest
from .protocols import DataRef, EpisodeProtocol, get_protocol, protocol_for
from .readers.folders import read_image_folder
from .readers.glyphs import load_glyphs, make_glyphs
from .safe_pickle import load_pickle
from .sampling import Episodes, EpisodeSpec, sample_episodes
from .specs import DataSpec, load_data, load_runs, parse_spec
from .torch_data import EpisodeDataset, EpisodicBatchSampler, ImageSetDataset, collate_episode

__all__ = [
    "DatasetError", "ImageSet", "Episodes", "EpisodeSpec", "sample_episodes", "save_manifest",
    "load_manifest", "DataSpec", "load_data", "load_runs", "parse_spec", "decode_image",
    "read_image_folder", "make_glyphs", "load_glyphs", "load_pickle", "EpisodeDataset",
    "EpisodicBatchSampler", "ImageSetDataset", "collate_episode", "EpisodeProtocol", "DataRef",
    "get_protocol", "protocol_for",
]

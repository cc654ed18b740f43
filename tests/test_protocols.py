"""Benchmark protocols: sets found from a data spec, episode protocols, and the same sets the
recipes' and grids' placeholder strings named before protocols replaced them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from adapt_fixtures import make_checkpoint

from episodes.errors import DatasetError
from episodes.protocols import (
    PROTOCOLS,
    DataRef,
    EpisodeProtocol,
    default_validation,
    get_protocol,
    protocol_for,
    training_split,
    validation_spec,
)
from episodes.specs import load_data
from fewshot.experiments.grid import grid_from_dict, read_grid_file
from fewshot.training.config import RECIPES, TrainConfig, load_recipe

ROOT = Path(__file__).resolve().parent.parent
SMALL1 = "omniglot:../shared/data/omniglot/images_background_small1.zip"
SMALL2 = "omniglot:../shared/data/omniglot/images_background_small2.zip"


def test_protocol_for_names_the_benchmark_of_a_spec():
    cases = {"glyphs": "glyphs", "glyphs?alphabets=10": "glyphs", SMALL1: "omniglot-minimal",
             "omniglot:../shared/data/omniglot?set=small1": "omniglot-minimal",
             "omniglot:/d/images_background.zip": "omniglot", "omniglot:/d": "omniglot",
             "omniglot-runs:/r": "omniglot-runs", "miniimagenet:/m": "miniimagenet",
             "folder:/x": "folder", "digits": "digits"}
    assert {spec: protocol_for(spec).name for spec in cases} == cases
    assert set(PROTOCOLS) == set(cases.values())
    with pytest.raises(DatasetError, match="unknown protocol 'imagenet'; known protocols: glyphs"):
        get_protocol("imagenet")


def test_sets_keep_the_source_and_drop_selections():
    glyphs = protocol_for("glyphs?alphabets=10&per_class=40&max_per_class=5")
    assert glyphs.base == DataRef("glyphs?alphabets=10&per_class=40&max_per_class=5", "base")
    assert glyphs.val == DataRef("glyphs?alphabets=10&per_class=40", "val")
    assert glyphs.novel == DataRef("glyphs?alphabets=10&per_class=40", "novel")
    mini = protocol_for("miniimagenet:/d/mini?max_per_class=4")
    assert (mini.val.joined(), mini.novel.joined()) == ("miniimagenet:/d/mini?split=val",
                                                        "miniimagenet:/d/mini?split=novel")
    minimal = protocol_for(SMALL1)
    assert minimal.val.spec == f"{SMALL2}?groups=Japanese_(katakana),Sanskrit"  # relative stays relative
    assert minimal.novel.spec == f"{SMALL2}?groups=Japanese_(katakana),Sanskrit,Tagalog"
    assert protocol_for("omniglot:/d/images_background.zip").novel.spec == "omniglot:/d/images_evaluation.zip"
    with pytest.raises(DatasetError, match="protocol digits has no base set"):
        protocol_for("digits").set("base")
    assert training_split("miniimagenet:/r") == "base" and training_split("glyphs") == "base"
    assert training_split("miniimagenet:/r?split=val") is None   # the spec's own choice stands
    assert training_split("miniimagenet:/r", "val") == "val"
    assert training_split("omniglot:/a.zip") is None and training_split("folder:/x") is None
    assert default_validation("glyphs?alphabets=5", "base") == DataRef("glyphs?alphabets=5", "val")
    assert default_validation("glyphs", "val") is None and default_validation(SMALL1, None) is None


def test_protocol_at_a_folder(omniglot_dir):
    bench = get_protocol("omniglot-minimal").at(omniglot_dir)
    assert bench.base.spec == f"omniglot:{omniglot_dir / 'images_background_small1.zip'}"
    assert get_protocol("omniglot-minimal").at("/nowhere").base.spec == "omniglot:/nowhere?set=small1"
    assert get_protocol("glyphs").at().novel == DataRef("glyphs", "novel")
    assert get_protocol("miniimagenet").at("/m").val == DataRef("miniimagenet:/m", "val")
    with pytest.raises(DatasetError, match="protocol miniimagenet reads miniimagenet data, not 'glyphs'"):
        get_protocol("miniimagenet").resolve("glyphs")


def test_minimal_omniglot_sets_load(omniglot_dir):
    """The root form (``?set=small1``) and the zip form name the same images."""
    by_root = protocol_for(f"omniglot:{omniglot_dir}?set=small1")
    by_zip = protocol_for(f"omniglot:{omniglot_dir / 'images_background_small1.zip'}")
    assert by_root.base.load(image_size=28).fingerprint == by_zip.base.load(image_size=28).fingerprint
    val, novel = by_root.val.load(image_size=28), by_zip.novel.load(image_size=28)
    assert val.fingerprint == by_zip.val.load(image_size=28).fingerprint
    assert val.num_classes == 47 + 42 and val.group_names == ["Japanese_(katakana)", "Sanskrit"]
    assert novel.num_classes == 106 and set(val.class_names) < set(novel.class_names)
    with pytest.raises(DatasetError, match="no Omniglot set named small9"):
        load_data(f"omniglot:{omniglot_dir}?set=small9")


def test_episode_protocol_draws_what_sampling_draws():
    from episodes.sampling import EpisodeSpec, sample_episodes

    data = load_data("glyphs?alphabets=5&per_class=8", "novel")
    proto = EpisodeProtocol(way=4, shots=(1, 3), query=2, episodes=7, seed=5)
    for eps, shot in zip(proto.sample(data), (1, 3)):
        ref = sample_episodes(data, EpisodeSpec(4, shot, 2), 7, seed=5)
        assert torch.equal(eps.support, ref.support) and torch.equal(eps.query, ref.query)
    one, three = proto.sample_nested(data)
    assert torch.equal(one.support, three.support[:, :, :1]) and torch.equal(one.query, three.query)
    assert (one.spec.shot, three.spec.shot) == (1, 3)
    with pytest.raises(DatasetError, match="shot must be a positive integer"):
        EpisodeProtocol(shots=(0,))


# ----------------------------------------------------------- same sets as the placeholders named
def _placeholders(spec: str, data_spec: str) -> str:
    """How recipes filled ``{data_path}`` / ``{data_dir}`` before protocols (the reference)."""
    body = data_spec.split(":", 1)[1] if ":" in data_spec else data_spec
    first = body.split("?", 1)[0].split("+", 1)[0]
    path = os.path.abspath(first) if first else os.getcwd()
    data_dir = os.path.dirname(path) if first else path
    return spec.replace("{data_path}", path).replace("{data_dir}", data_dir)


OLD_RECIPE_VAL = {  # recipe: (val template, val_way, val_shots, val_query, val_episodes, val_within_group)
    "omniglot": ("omniglot:{data_dir}/images_background_small2.zip?groups=Japanese_(katakana),Sanskrit",
                 20, [1], 5, 600, True),
    "miniimagenet-conv4": ("miniimagenet:{data_path}?split=val", 5, [1, 5], 15, 600, False),
    "miniimagenet": ("miniimagenet:{data_path}?split=val", 5, [1, 5], 15, 600, False),
}
RECIPE_DATA = {"omniglot": [SMALL1, "omniglot:/abs/o/images_background_small1.zip?groups=Latin"],
               "miniimagenet-conv4": ["miniimagenet:../shared/data/miniimagenet",
                                      "miniimagenet:/d/mini/?max_per_class=5"],
               "miniimagenet": ["miniimagenet:~/mini", "miniimagenet:rel/mini"]}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_resolve_the_validation_the_placeholders_gave(recipe):
    text = (ROOT / "fewshot" / "recipes" / f"{recipe}.toml").read_text()
    assert "{data_dir}" not in text and "{data_path}" not in text
    if recipe not in OLD_RECIPE_VAL:   # no validation set: base classes are held out, as before
        assert "val" not in load_recipe(recipe)
        return
    template, *episodes = OLD_RECIPE_VAL[recipe]
    for data in RECIPE_DATA[recipe]:
        cfg = TrainConfig.resolve(recipe, data=data)
        assert validation_spec(cfg.val, data) == _placeholders(template, data)
        assert [cfg.val_way, cfg.val_shots, cfg.val_query, cfg.val_episodes, cfg.val_within_group] == episodes
    # the caller's own settings still win over the protocol's
    assert TrainConfig.resolve(recipe, data=RECIPE_DATA[recipe][0], val_episodes=20).val_episodes == 20


OLD_GRID_SETS = {  # grid file: its evaluation sets (name, data, split) as the files spelled them out
    "glyphs-5-heads-shots": [("novel", "glyphs?alphabets=10&per_class=40", "novel")],
    "glyphs-6-domain-shift": [("novel", "glyphs?alphabets=10", "novel"),
                              ("omniglot", f"{SMALL2}?groups=Japanese_(katakana),Sanskrit,Tagalog", None),
                              ("digits", "digits", None)],
    "omniglot-6-domain-shift": [("heldout", f"{SMALL2}?groups=Japanese_(katakana),Sanskrit,Tagalog", None),
                                ("glyphs", "glyphs?alphabets=10", "novel"), ("digits", "digits", None)],
    "photos-domain-shift": [
        ("miniimagenet-val", "miniimagenet:../shared/data/miniimagenet", "val"),
        ("omniglot-small2", f"{SMALL2}?groups=Japanese_(katakana),Sanskrit,Tagalog", None)],
}


GRID_FILES = sorted((ROOT / "benchmarks" / "ablations").glob("*.toml"))


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.stem)
def test_grid_files_resolve_the_sets_they_spelled_out(path, tmp_path):
    doc = read_grid_file(path)
    if "checkpoint" in doc.get("grid", {}):  # trained encoders it scores: tiny real checkpoints stand in
        doc["grid"]["checkpoint"] = [str(make_checkpoint(tmp_path / f"encoder{i}.pt"))
                                     for i, _ in enumerate(doc["grid"]["checkpoint"])]
    default = ([("novel", "glyphs?alphabets=10", "novel")] if path.stem.startswith("glyphs")
               else [("heldout", f"{SMALL2}?groups=Japanese_(katakana),Sanskrit,Tagalog", None)])
    grid = grid_from_dict(doc, source=str(path))
    assert [(s.name, s.data, s.split) for s in grid.eval_sets] == OLD_GRID_SETS.get(path.stem, default)
    assert not any(s.within_group for s in grid.eval_sets)

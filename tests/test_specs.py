"""Data specs and load_data."""

from __future__ import annotations

import pytest

from episodes.errors import DatasetError
from episodes.specs import KINDS, load_data, parse_spec


def test_parse_spec():
    s = parse_spec("omniglot:/a/b.zip+/c/d.zip?groups=Greek,Latin&max_per_class=5")
    assert s.kind == "omniglot" and s.paths == ("/a/b.zip", "/c/d.zip")
    assert s.options == {"groups": "Greek,Latin", "max_per_class": "5"}
    assert parse_spec("glyphs?seed=3").options == {"seed": "3"}
    assert parse_spec("folder:/x:y").paths == ("/x:y",)
    assert parse_spec("omniglot:/root?set=small1,small2").options == {"set": "small1,small2"}


@pytest.mark.parametrize("bad, message", [
    ("imagenet:/x", "unknown data kind 'imagenet'.*valid kinds: glyphs, omniglot"),
    ("", "empty data spec"),
    ("omniglot", "needs a path"),
    ("digits:/x", "takes no path"),
    ("glyphs?colour=red", "unknown or empty option 'colour=red'.*seed="),
    ("folder:/x?seed=1", "valid options for folder"),
    ("glyphs?set=small1", "valid options for glyphs"),
])
def test_bad_specs(bad, message):
    with pytest.raises(DatasetError, match=message):
        parse_spec(bad)


def test_every_kind_is_documented():
    import episodes.specs as specs

    for kind in KINDS:
        assert f"``{kind}" in specs.__doc__


def test_load_data_selection_and_conversion(omniglot_dir):
    spec = f"omniglot:{omniglot_dir / 'images_background_small2.zip'}?groups=Japanese_(katakana),Sanskrit"
    data = load_data(spec, image_size=28)
    assert data.num_classes == 47 + 42 and data.image_size == (28, 28) and data.name == spec
    capped = load_data(spec + "&max_per_class=3", image_size=28, channels=3)
    assert capped.class_counts().tolist() == [3] * 89 and capped.channels == 3
    rest = load_data(f"omniglot:{omniglot_dir}?exclude_groups=Tagalog,Greek", image_size=28)
    assert rest.num_classes == 242 - 17 - 24
    with pytest.raises(DatasetError, match="unknown groups"):
        load_data(spec.replace("Sanskrit", "Klingon"), image_size=28)
    with pytest.raises(DatasetError, match=r"no images_evaluation\* set"):
        load_data(f"omniglot:{omniglot_dir}", "novel")
    assert load_data(f"omniglot:{omniglot_dir}", "base", image_size=28).num_classes == 242


def test_load_data_splits_and_missing_paths(tmp_path):
    assert load_data("glyphs?per_class=3", "val").num_classes == 80
    assert load_data("glyphs?alphabets=6&per_class=2", "novel").group_names == ["alphabet05"]
    assert load_data("digits", "novel").num_classes == 10
    with pytest.raises(DatasetError, match="digits has no split 'base'"):
        load_data("digits", "base")
    with pytest.raises(DatasetError, match="contradicts"):
        load_data("glyphs?split=val", "novel")
    with pytest.raises(DatasetError, match="must be an integer"):
        load_data("glyphs?seed=x")
    for spec in (f"omniglot:{tmp_path}/none.zip", f"folder:{tmp_path}/none", f"miniimagenet:{tmp_path}/none",
                 f"omniglot-runs:{tmp_path}/none"):
        with pytest.raises(DatasetError) as err:
            load_data(spec)
        assert f"{tmp_path}/none" in str(err.value)

"""The registry and its typed options: conversion by declared type, the one error form, objects
passing through, and every entry of every registry of the toolkit built with its defaults."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from fewshot.errors import FewShotError
from fewshot.evaluation.features import TRANSFORMS
from fewshot.heads import HEADS
from fewshot.models.encoders import CLASSIFIERS, ENCODERS
from fewshot.models.losses import DISTANCES, LOSSES, MINERS
from fewshot.options import REQUIRED, parse_pairs
from fewshot.registry import Registry
from fewshot.training.augment import AUGMENT_MODES, Augment
from fewshot.training.config import OBJECTIVES, OPTIMIZERS, RECIPES, SAMPLERS, load_recipe

TOYS = Registry("toy", passthrough=nn.Module)


@TOYS.register("thing", flavour="sweet")
def thing(flag: bool = True, n: int = 1, x: float = 0.5, grid: tuple[float, ...] = (1.0,),
          sizes: list[int] | None = None, limit: int | None = 3, mode: Literal["a", "b"] = "a",
          label: str = "", raw=None) -> dict:
    """A toy factory that returns what it was given."""
    return dict(flag=flag, n=n, x=x, grid=grid, sizes=sizes, limit=limit, mode=mode, label=label, raw=raw)


TOYS.register("other", nn.Identity, options={}, flavour="sour", doc="an identity module.")


def test_texts_are_converted_by_declared_type():
    got = TOYS.create("thing:flag=false,n=3,x=2,grid=0.1;1;10,sizes=4;5,limit=none,mode=b,label=7,raw=1.5")
    assert got == dict(flag=False, n=3, x=2.0, grid=(0.1, 1.0, 10.0), sizes=[4, 5], limit=None, mode="b",
                       label="7", raw=1.5)
    assert type(got["x"]) is float and type(got["n"]) is int and got["flag"] is False
    for text, value in [("true", True), ("1", True), ("yes", True), ("off", False), ("0", False)]:
        assert TOYS.create(f"thing:flag={text}")["flag"] is value
    # keywords: texts converted the same way, typed values checked; they win over the name's options
    assert TOYS.create("thing:n=2", n="5")["n"] == 5
    assert TOYS.create("thing", grid=[1, 2])["grid"] == [1, 2]
    # the repeatable K=V flags use the same parser: ',' separates list items there
    assert TOYS.create("thing", **parse_pairs(["sizes=64,96", "raw=true"]))["sizes"] == [64, 96]
    assert TOYS.create(" thing ")["n"] == 1  # names are stripped


@pytest.mark.parametrize("spec,words", [
    ("thing:n=2.5", "toy 'thing' option n='2.5': expected an integer"),
    ("thing:flag=maybe", "expected a boolean (true/1/yes/false/0/no)"),
    ("thing:mode=c", "expected one of a, b"),
    ("thing:grid=1;x", "expected a number list separated by ';' or ','"),
    ("thing:n", "toy option 'n' in 'thing:n' must be key=value"),
    ("thing:n=1,n=2", "'n' given twice"),
])
def test_bad_values_are_one_line_saying_what_is_accepted(spec, words):
    with pytest.raises(FewShotError) as err:
        TOYS.create(spec)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(FewShotError, match=r"^unknown toy 'thng'; choose one of thing, other$"):
        TOYS.create("thng")
    with pytest.raises(FewShotError, match="^unknown loss 'cirle'; choose one of circle, contrastive"):
        LOSSES.create("cirle")
    with pytest.raises(FewShotError, match=r"unknown recipe 'nope'; choose one of .*omniglot or give"):
        load_recipe("nope")


def test_unknown_option_lists_the_valid_options_with_their_types():
    with pytest.raises(FewShotError) as err:
        TOYS.create("thing:nn=3")
    assert str(err.value) == (
        "unknown toy 'thing' options ['nn']; valid: flag: bool = True, n: int = 1, x: float = 0.5, "
        "grid: tuple[float, ...] = (1.0,), sizes: list[int] | None = None, limit: int | None = 3, "
        "mode: 'a' | 'b' = 'a', label: str = '', raw = None")
    with pytest.raises(FewShotError, match=r"unknown head 'ls' options \['lamda'\]; valid: lam: float"):
        HEADS.create("ls:lamda=1")
    with pytest.raises(FewShotError, match=r"encoder 'resnet12' options \['width'\]; valid: channels"):
        ENCODERS.create("resnet12", width=3)


def test_typed_values_must_fit():
    with pytest.raises(FewShotError, match="toy 'thing' option n must be an integer, got 2.5"):
        TOYS.create("thing", n=2.5)
    with pytest.raises(FewShotError, match="toy 'thing' option flag must be true or false, got 1"):
        TOYS.create("thing", flag=1)


def test_objects_pass_through_unchanged():
    module = nn.Linear(2, 2)
    assert TOYS.create(module) is module
    loss = LOSSES.create("ntxent")
    assert LOSSES.create(loss) is loss
    head = HEADS.create("proto")
    assert HEADS.create(head) is head
    with pytest.raises(FewShotError, match="a toy must be a name .* or a Module, got int"):
        TOYS.create(3)


def test_entries_carry_facts_and_tables_of_objects():
    assert TOYS.names(flavour="sour") == ("other",) and TOYS.get("thing").meta["flavour"] == "sweet"
    assert "thing" in TOYS and "Thing" not in TOYS and len(TOYS) == 2 and list(TOYS) == ["thing", "other"]
    assert "Conv4" in ENCODERS and ENCODERS.get("Conv4").name == "conv4"  # encoder names ignore case
    assert LOSSES.names(proxy=True) == ("arcface", "proxyanchor")
    assert HEADS.names(adaptable=True) == ("proto", "nn", "ls")
    plain = Registry("colour", call=False)
    plain.register("red", (255, 0, 0))
    plain.register("grey")  # a documented choice: the object is its name
    assert plain.create("red") == (255, 0, 0) and plain.create("grey") == "grey"
    with pytest.raises(FewShotError, match=r"unknown colour 'red' options \['x'\]; valid: \(none\)"):
        plain.create("red:x=1")
    with pytest.raises(FewShotError, match="registered twice"):
        plain.register("red", 1)


def test_same_names_and_options_build_the_same_objects():
    torch.manual_seed(0)
    a = ENCODERS.create("conv4:width=8;8;16;16,pool=avg", in_channels=1)
    torch.manual_seed(0)
    b = ENCODERS.create("conv4", in_channels=1, width=[8, 8, 16, 16], pool="avg")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert LOSSES.create("circle:m=0.3").m == LOSSES.create("circle", m=0.3).m == 0.3
    assert HEADS.create("nn:k=3,weighted=false") == HEADS.create("nn", k=3, weighted=False)


# ---------------------------------------------------------------- every entry
SUPPLIED = {"in_channels": 1, "dim": 8, "num_classes": 4, "embedding_size": 8}
REGISTRIES = [ENCODERS, CLASSIFIERS, LOSSES, MINERS, DISTANCES, HEADS, TRANSFORMS, AUGMENT_MODES, RECIPES,
              OBJECTIVES, OPTIMIZERS, SAMPLERS]


@pytest.mark.parametrize("registry,name", [(r, n) for r in REGISTRIES for n in r],
                         ids=[f"{r.kind}-{n}" for r in REGISTRIES for n in r])
def test_every_entry_of_every_registry_builds_with_its_defaults(registry, name):
    entry = registry.get(name)
    required = {k: SUPPLIED[k] for k in entry.supplied if k in SUPPLIED}
    required.update({k: SUPPLIED[k] for k, o in entry.options.items() if o.default is REQUIRED})
    obj = registry.create(name, **required)
    if registry is ENCODERS:
        assert isinstance(obj, nn.Module) and obj(torch.zeros(2, 1, 32, 32)).shape[0] == 2
    elif registry in (LOSSES, CLASSIFIERS, DISTANCES):
        assert isinstance(obj, nn.Module)
    elif registry is MINERS:
        assert obj is None if name == "none" else isinstance(obj, nn.Module)
    elif registry is HEADS:
        s, y = torch.randn(1, 4, 8), torch.tensor([[0, 0, 1, 1]])
        if callable(getattr(obj, "with_base_means", None)):   # proto-dc: the checkpoint's base-class means
            obj.with_base_means(torch.randn(3, 8))
        extra = {"tangents": torch.zeros(1, 4, 1, 2, 8)} if getattr(obj, "tangents", 0) else {}
        assert obj.fit(s, y, 2, **extra)(torch.randn(1, 3, 8)).shape == (1, 3, 2)
    elif registry is TRANSFORMS:
        assert obj(torch.ones(2, 4), torch.zeros(4)).shape == (2, 4)
    elif registry is AUGMENT_MODES:
        images = torch.rand(2, 1, 8, 8)
        assert Augment(mode=name)(images, torch.Generator().manual_seed(0)).shape == images.shape
    elif registry is RECIPES:
        assert isinstance(obj, Path) and isinstance(load_recipe(name), dict)
    else:
        assert obj == name


def test_docs_page_lists_every_entry():
    page = (Path(__file__).resolve().parent.parent / "docs" / "registry.md").read_text()
    for registry in REGISTRIES:
        for name in registry:
            assert f"`{name}`" in page, f"docs/registry.md lacks {registry.kind} {name}"


def test_docs_example_runs_as_written(tmp_path):
    """The registration example of docs/registry.md, in its own process (it registers names)."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "registry.md").read_text()
    code, printed = re.findall(r"```python\n(.*?)```\n\nprints\n\n```\n(.*?)```", page, re.S)[0]
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed


@pytest.mark.parametrize("argv,words", [
    (["--loss", "cirle"], "unknown loss 'cirle'; choose one of circle, contrastive"),
    (["--loss-arg", "m"], "--loss-arg 'm' must be key=value"),
    (["--encoder-arg", "depth=3"], "unknown encoder 'conv4' options ['depth']; valid: width: int"),
    (["--encoder-arg", "pool=max"], "encoder 'conv4' option pool='max': expected one of flatten, avg"),
    (["--augment-arg", "degrees=lots"], "augmentation option degrees='lots': expected a number"),
])
def test_cli_names_and_options_fail_in_one_line(tmp_path, capsys, argv, words):
    from fewshot.cli import main
    out = tmp_path / "run"
    code = main(["train", "--data", "digits", "--epochs", "1", "--quiet", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and "\n" not in err and not out.exists()


def test_names_are_exact_a_padded_name_is_not_a_member():
    """A padded name would be recorded and compared as given downstream (a checkpoint saying
    " cosine" scores as euclidean), so membership and lookup are exact."""
    assert "cosine" in DISTANCES and " cosine" not in DISTANCES and "cosine " not in DISTANCES
    with pytest.raises(FewShotError, match="unknown distance ' cosine'; choose one of cosine, euclidean"):
        DISTANCES.get(" cosine")
    assert "Circle" in LOSSES and " circle" not in LOSSES  # case-folded where the registry says so

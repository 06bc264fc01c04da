"""Tests for textualdeg.options: inheritance, overrides, validation, Options, saving.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import pickle
import textwrap
from pathlib import Path

import pytest
import yaml

from textualdeg.options import (
    REQUIRED,
    Field,
    ListOf,
    MapOf,
    Options,
    OptionsError,
    Section,
    add_option_arguments,
    describe_options,
    load_options,
    options_from_dict,
    parse_options,
    save_options,
)

# A tiny BasicSR-style schema, for these tests only.
DATASET = Section(
    {
        "type": Field(str, help="dataset class"),
        "dataroot_gt": Field(str, path=True, help="HQ folder"),
        "dataroot_lq": Field(str, default=None, path=True, help="LQ folder"),
        "gt_size": Field(int, default=128, help="crop size"),
        "use_hflip": Field(bool, default=True, help="random flips"),
    },
    aliases={"lqroot": "dataroot_lq", "hqroot": "dataroot_gt"},
)
SCHEMA = Section(
    {
        "name": Field(str, help="experiment name"),
        "manual_seed": Field(int, default=0, help="seed"),
        "datasets": MapOf(DATASET, help="datasets by phase"),
        "network_g": Section({"type": Field(str)}, open=True, help="type + constructor kwargs"),
        "train": Section(
            {
                "total_iter": Field(int, help="optimizer steps"),
                "lr": Field(float, default=1e-3, help="learning rate"),
                "milestones": Field(ListOf(int), default=(), help="lr milestones"),
                "betas": Field(ListOf(float), default=(0.9, 0.99)),
                "optimizer": Field(str, default="Adam", choices=("Adam", "AdamW")),
                "gt_size": Field((int, ListOf(int)), default=128),
                "ema": Field(Section({"decay": Field(float, default=0.999)}), default=None),
            }
        ),
        "path": Section({"pretrain_network_g": Field(str, default=None, path=True)}),
        "tags": Field(list, default=()),
    },
    ignored={"num_gpu", "launcher"},
)

MINIMAL = """
name: exp
datasets:
  train:
    type: Paired
    dataroot_gt: data/gt
network_g:
  type: NAFNet
  width: 16
  enc_blk_nums: [1, 1]
train:
  total_iter: 10
"""


def write(folder: Path, name: str, text: str) -> Path:
    """Write a dedented YAML file and return its path."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def minimal(tmp_path: Path) -> Path:
    return write(tmp_path, "exp.yml", MINIMAL)


# --------------------------------------------------------------------- loading, defaults


def test_load_fills_defaults_and_reads_values(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA)
    assert opt.name == "exp"
    assert opt.train.total_iter == 10
    assert opt.train.lr == pytest.approx(1e-3)
    assert opt.train.betas == (0.9, 0.99)
    assert opt.train.optimizer == "Adam"
    assert opt.train.ema is None  # optional block stays null when absent
    assert opt.datasets.train.gt_size == 128
    assert opt.datasets.train.dataroot_lq is None
    assert opt.path.pretrain_network_g is None
    assert opt.manual_seed == 0
    assert opt.tags == ()


def test_open_section_keeps_extra_keys_and_validates_declared(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA)
    assert opt.network_g.to_dict() == {"type": "NAFNet", "width": 16, "enc_blk_nums": [1, 1]}
    with pytest.raises(OptionsError, match=r"network_g\.type"):
        load_options(minimal, SCHEMA, ["network_g.type=3"])


def test_optional_section_is_validated_when_given(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA, ["train.ema.decay=0.99"])
    assert opt.train.ema.decay == pytest.approx(0.99)
    with pytest.raises(OptionsError, match=r"unknown option 'train\.ema\.decy'.*did you mean 'train\.ema\.decay'"):
        load_options(minimal, SCHEMA, ["train.ema.decy=0.99"])


def test_empty_mapof_defaults_to_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yml", "name: x\ntrain: {total_iter: 1}\nnetwork_g: {type: A}\n")
    assert load_options(path, SCHEMA).datasets == {}


# --------------------------------------------------------------------- base inheritance


def test_base_single_deep_merge_and_list_replacement(tmp_path: Path) -> None:
    write(
        tmp_path,
        "configs/base.yml",
        """
        name: base
        network_g: {type: NAFNet, width: 32, enc_blk_nums: [1, 1, 1]}
        train: {total_iter: 100, lr: 2.0e-4, milestones: [10, 20, 30]}
        """,
    )
    child = write(
        tmp_path,
        "configs/sub/child.yml",
        """
        base: ../base.yml
        name: child
        network_g: {enc_blk_nums: [2]}
        train: {milestones: [5]}
        """,
    )
    opt = load_options(child, SCHEMA)
    assert opt.name == "child"
    assert opt.network_g.to_dict() == {"type": "NAFNet", "width": 32, "enc_blk_nums": [2]}
    assert opt.train.total_iter == 100  # kept from the base (deep merge)
    assert opt.train.lr == pytest.approx(2e-4)
    assert opt.train.milestones == (5,)  # lists are replaced, not concatenated
    assert "base" not in opt


def test_base_list_merged_in_order_and_nested(tmp_path: Path) -> None:
    write(tmp_path, "root.yml", "name: root\ntrain: {total_iter: 1, lr: 0.1}\nnetwork_g: {type: A}\n")
    write(tmp_path, "a.yml", "base: root.yml\ntrain: {total_iter: 2}\nmanual_seed: 1\n")
    write(tmp_path, "b.yml", "train: {total_iter: 3}\nnetwork_g: {type: B}\n")
    child = write(tmp_path, "child.yml", "base: [a.yml, b.yml]\nname: child\n")
    opt = load_options(child, SCHEMA)
    assert opt.train.total_iter == 3  # b after a
    assert opt.train.lr == pytest.approx(0.1)  # from root, through a
    assert opt.manual_seed == 1
    assert opt.network_g.type == "B"
    child2 = write(tmp_path, "child2.yml", "base: [b.yml, a.yml]\nname: child\n")
    assert load_options(child2, SCHEMA).train.total_iter == 2  # order matters


def test_base_cycle_and_missing_base_are_errors(tmp_path: Path) -> None:
    write(tmp_path, "x.yml", "base: y.yml\n")
    write(tmp_path, "y.yml", "base: x.yml\n")
    with pytest.raises(OptionsError, match="cycle"):
        load_options(tmp_path / "x.yml", SCHEMA)
    bad = write(tmp_path, "bad.yml", "base: nowhere.yml\nname: x\n")
    with pytest.raises(OptionsError, match=r"nowhere\.yml.*base of .*bad\.yml"):
        load_options(bad, SCHEMA)
    wrong = write(tmp_path, "wrong.yml", "base: {a: 1}\n")
    with pytest.raises(OptionsError, match="'base'"):
        load_options(wrong, SCHEMA)


def test_unknown_key_names_the_file_it_came_from(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yml", MINIMAL + "  total_itr: 5\n")
    child = write(tmp_path, "child.yml", "base: base.yml\nname: child\n")
    with pytest.raises(OptionsError) as info:
        load_options(child, SCHEMA)
    assert info.value.key == "train.total_itr"
    assert info.value.source == str(base)
    assert str(base) in str(info.value) and "did you mean 'train.total_iter'" in str(info.value)


# --------------------------------------------------------------------- overrides


def test_overrides_are_parsed_as_yaml(minimal: Path) -> None:
    opt = load_options(
        minimal,
        SCHEMA,
        [
            "name=debug",
            "train.total_iter=1000",
            "train.lr=1e-4",
            "train.milestones=[1, 2]",
            "datasets.train.use_hflip=false",
            "network_g.width=8",
            "path.pretrain_network_g=null",
        ],
    )
    assert opt.name == "debug"
    assert opt.train.total_iter == 1000
    assert opt.train.lr == pytest.approx(1e-4)
    assert opt.train.milestones == (1, 2)
    assert opt.datasets.train.use_hflip is False
    assert opt.network_g.width == 8
    assert opt.path.pretrain_network_g is None


def test_override_creates_missing_mapping(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA, ["datasets.val_1.type=Paired", "datasets.val_1.dataroot_gt=v/gt"])
    assert opt.datasets.val_1.type == "Paired"
    assert opt.datasets.val_1.gt_size == 128


def test_override_of_unknown_key_names_set(minimal: Path) -> None:
    with pytest.raises(OptionsError) as info:
        load_options(minimal, SCHEMA, ["train.total_itr=3"])
    assert info.value.source == "--set"
    assert "--set" in str(info.value) and "train.total_iter" in str(info.value)
    with pytest.raises(OptionsError, match=r"unknown option 'trian'.*did you mean 'train'"):
        load_options(minimal, SCHEMA, ["trian.total_iter=3"])


def test_bad_override_syntax(minimal: Path) -> None:
    for item in ("train.total_iter", "=3", "train..x=1"):
        with pytest.raises(OptionsError, match="KEY=VALUE"):
            load_options(minimal, SCHEMA, [item])
    with pytest.raises(OptionsError, match="not a mapping"):
        load_options(minimal, SCHEMA, ["name.first=x"])


def test_override_mapping_form_and_later_wins(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA, {"train.total_iter": 7, "name": "m"})
    assert (opt.train.total_iter, opt.name) == (7, "m")
    opt = load_options(minimal, SCHEMA, ["train.total_iter=1", "train.total_iter=2"])
    assert opt.train.total_iter == 2


# --------------------------------------------------------------------- path expansion


def test_path_fields_expand_home_and_env(minimal: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TD_DATA", "/data/sets")
    opt = load_options(
        minimal,
        SCHEMA,
        ["datasets.train.dataroot_gt=${TD_DATA}/gt", "datasets.train.dataroot_lq=~/lq", "name=${TD_DATA}"],
    )
    assert opt.datasets.train.dataroot_gt == "/data/sets/gt"
    assert opt.datasets.train.dataroot_lq == str(tmp_path / "home" / "lq")
    assert opt.name == "${TD_DATA}"  # not a path field: left alone


def test_undefined_env_var_is_an_error_naming_it(minimal: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TD_UNDEFINED_VAR", raising=False)
    with pytest.raises(OptionsError, match=r"TD_UNDEFINED_VAR.*not set") as info:
        load_options(minimal, SCHEMA, ["datasets.train.dataroot_gt=${TD_UNDEFINED_VAR}/gt"])
    assert info.value.key == "datasets.train.dataroot_gt"


# --------------------------------------------------------------------- validation errors


def test_unknown_nested_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yml", MINIMAL.replace("dataroot_gt: data/gt", "dataroot_gt: data/gt\n    gt_sise: 64"))
    with pytest.raises(OptionsError) as info:
        load_options(path, SCHEMA)
    message = str(info.value)
    assert "datasets.train.gt_sise" in message and str(path) in message
    assert "did you mean 'datasets.train.gt_size'" in message


def test_unknown_key_without_close_match_lists_valid_keys(minimal: Path) -> None:
    with pytest.raises(OptionsError, match=r"unknown option 'zzz'.*valid keys here: datasets, manual_seed"):
        load_options(minimal, SCHEMA, ["zzz=1"])


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("train.total_iter=abc", "train.total_iter", "expected int"),
        ("train.total_iter=2.5", "train.total_iter", "expected int"),
        ("train.total_iter=true", "train.total_iter", "expected int"),
        ("train.lr=true", "train.lr", "expected float"),
        ("train.lr=fast", "train.lr", "expected float"),
        ("datasets.train.use_hflip=1", "datasets.train.use_hflip", "expected bool"),
        ("name=[a]", "name", "expected str"),
        ("name=null", "name", "got null"),
        ("train.milestones=5", "train.milestones", "expected list of int"),
        ("train.gt_size=abc", "train.gt_size", "expected int or list of int"),
        ("train=5", "train", "expected mapping"),
    ],
)
def test_wrong_type_names_key_and_expected_type(minimal: Path, override: str, key: str, expected: str) -> None:
    with pytest.raises(OptionsError) as info:
        load_options(minimal, SCHEMA, [override])
    assert info.value.key == key
    assert f"'{key}'" in str(info.value) and expected in str(info.value)


def test_wrong_list_item_names_its_index(minimal: Path) -> None:
    with pytest.raises(OptionsError, match=r"'train\.milestones\[1\]'.*expected int"):
        load_options(minimal, SCHEMA, ["train.milestones=[1, x]"])


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yml", MINIMAL.replace("  total_iter: 10\n", "  lr: 0.1\n"))
    with pytest.raises(OptionsError, match=r"missing required option 'train\.total_iter'") as info:
        load_options(path, SCHEMA)
    assert info.value.key == "train.total_iter"
    path = write(tmp_path, "f.yml", MINIMAL.replace("    dataroot_gt: data/gt\n", ""))
    with pytest.raises(OptionsError, match=r"missing required option 'datasets\.train\.dataroot_gt'"):
        load_options(path, SCHEMA)


def test_choices(minimal: Path) -> None:
    assert load_options(minimal, SCHEMA, ["train.optimizer=AdamW"]).train.optimizer == "AdamW"
    with pytest.raises(OptionsError, match=r"train\.optimizer.*one of.*did you mean 'AdamW'"):
        load_options(minimal, SCHEMA, ["train.optimizer=adamw"])


# --------------------------------------------------------------------- numeric coercion


@pytest.mark.parametrize(
    ("text", "value"),
    [("2e-4", 2e-4), ("'2e-4'", 2e-4), ("2.0e-4", 2e-4), ("3", 3.0), ("1E3", 1000.0)],
)
def test_float_fields_accept_ints_and_exponent_strings(minimal: Path, text: str, value: float) -> None:
    lr = load_options(minimal, SCHEMA, [f"train.lr={text}"]).train.lr
    assert isinstance(lr, float) and lr == pytest.approx(value)


def test_plain_yaml_reads_2e_4_as_a_string_but_options_read_a_float(tmp_path: Path) -> None:
    assert yaml.safe_load("lr: 2e-4")["lr"] == "2e-4"  # the problem being solved
    path = write(tmp_path, "e.yml", MINIMAL + "  lr: 2e-4\n")
    assert load_options(path, SCHEMA).train.lr == pytest.approx(2e-4)
    path = write(tmp_path, "f.yml", MINIMAL.replace("width: 16", "width: 16\n  drop: 1e-1"))
    assert load_options(path, SCHEMA).network_g.drop == pytest.approx(0.1)  # open sections too


def test_int_fields_accept_integral_floats_only(minimal: Path) -> None:
    for text in ("3e5", "300000.0", "'300000'"):
        total = load_options(minimal, SCHEMA, [f"train.total_iter={text}"]).train.total_iter
        assert isinstance(total, int) and total == 300000
    with pytest.raises(OptionsError):
        load_options(minimal, SCHEMA, ["train.total_iter=1.5e0"])


# --------------------------------------------------------------------- aliases, ignored


def test_alias_is_renamed_with_one_deprecation_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "e.yml", MINIMAL.replace("dataroot_gt: data/gt", "hqroot: data/gt\n    lqroot: data/lq"))
    caplog.set_level(logging.WARNING, logger="textualdeg.options")
    opt = load_options(path, SCHEMA, ["datasets.val_2.type=P", "datasets.val_2.hqroot=x"])
    assert opt.datasets.train.dataroot_gt == "data/gt"
    assert opt.datasets.train.dataroot_lq == "data/lq"
    assert "lqroot" not in opt.datasets.train
    records = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(records) == 1
    assert "datasets.train.lqroot -> datasets.train.dataroot_lq" in records[0].getMessage()
    assert "datasets.val_2.hqroot -> datasets.val_2.dataroot_gt" in records[0].getMessage()


def test_alias_and_new_key_together_is_an_error(minimal: Path) -> None:
    with pytest.raises(OptionsError, match=r"lqroot.*dataroot_lq.*both"):
        load_options(minimal, SCHEMA, ["datasets.train.lqroot=a", "datasets.train.dataroot_lq=b"])


def test_alias_errors_keep_the_right_source(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yml", MINIMAL.replace("dataroot_gt: data/gt", "dataroot_gt: data/gt\n    lqroot: [1]"))
    with pytest.raises(OptionsError, match=r"datasets\.train\.dataroot_lq.*" + str(path).replace(".", r"\.")):
        load_options(path, SCHEMA)


def test_ignored_keys_are_dropped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "e.yml", MINIMAL + "num_gpu: 8\nlauncher: pytorch\n")
    caplog.set_level(logging.WARNING, logger="textualdeg.options")
    opt = load_options(path, SCHEMA)
    assert "num_gpu" not in opt and "launcher" not in opt
    records = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(records) == 1
    assert "num_gpu" in records[0].getMessage() and "launcher" in records[0].getMessage()
    caplog.clear()
    load_options(tmp_path / "e.yml", SCHEMA, ["num_gpu=1"])  # no duplicate warning per key source
    assert len([r for r in caplog.records if "ignoring" in r.getMessage()]) == 1


def test_no_warning_without_legacy_keys(minimal: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="textualdeg.options")
    load_options(minimal, SCHEMA)
    assert not caplog.records


# --------------------------------------------------------------------- YAML file problems


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yml", MINIMAL + "  total_iter: 20\n")
    with pytest.raises(OptionsError, match=r"duplicate key 'total_iter'"):
        load_options(path, SCHEMA)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    path = write(tmp_path, "e.yml", MINIMAL.replace("width: 16", "width: &w 16\n  size: *w"))
    assert load_options(path, SCHEMA).network_g.size == 16
    text = "x: &d {type: Paired, dataroot_gt: a}\n" + MINIMAL.replace(
        "  train:\n    type: Paired\n    dataroot_gt: data/gt", "  train:\n    <<: *d\n    dataroot_gt: b"
    )
    with pytest.raises(OptionsError, match="unknown option 'x'"):
        load_options(write(tmp_path, "m.yml", text), SCHEMA)
    opt = load_options(write(tmp_path, "m2.yml", text), Section({**SCHEMA.fields, "x": Field(dict)}))
    assert opt.datasets.train.dataroot_gt == "b" and opt.datasets.train.type == "Paired"


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="cannot read option file .*missing.yml"):
        load_options(tmp_path / "missing.yml", SCHEMA)
    with pytest.raises(OptionsError, match="cannot parse .*broken.yml"):
        load_options(write(tmp_path, "broken.yml", "name: [unclosed\n"), SCHEMA)
    with pytest.raises(OptionsError, match="mapping at the top level"):
        load_options(write(tmp_path, "list.yml", "- a\n- b\n"), SCHEMA)
    with pytest.raises(OptionsError, match="missing required option 'name'"):
        load_options(write(tmp_path, "empty.yml", ""), SCHEMA)
    with pytest.raises(OptionsError, match="non-string key 1"):
        load_options(write(tmp_path, "int.yml", MINIMAL + "  1: 2\n"), SCHEMA)


# --------------------------------------------------------------------- schema definition


def test_schema_definition_errors() -> None:
    with pytest.raises(ValueError, match="type_"):
        Field(object)
    with pytest.raises(ValueError, match="default=1.5"):
        Field(int, default=1.5)
    with pytest.raises(ValueError, match="choices"):
        Field(str, default="SGD", choices=("Adam",))
    with pytest.raises(ValueError, match="aliases"):
        Section({"a": Field(int)}, aliases={"old": "missing"})
    with pytest.raises(ValueError, match="ignored"):
        Section({"a": Field(int)}, ignored={"a"})
    with pytest.raises(ValueError, match="fields"):
        Section({"a": int})
    assert Field(float, default=1).default == 1.0 and isinstance(Field(float, default=1).default, float)
    assert Field(int).required and not Field(int, default=None).required and Field(int, default=None).nullable
    assert repr(REQUIRED) == "REQUIRED" and pickle.loads(pickle.dumps(REQUIRED)) is REQUIRED


def test_describe_options_lists_every_key() -> None:
    text = describe_options(SCHEMA)
    assert "train.total_iter: int (required) optimizer steps" in text
    assert "datasets.<name>.dataroot_gt: str (required, path) HQ folder" in text
    assert "train.optimizer: str (default 'Adam', one of ['Adam', 'AdamW'])" in text
    assert "train.ema.decay: float (default 0.999)" in text


# --------------------------------------------------------------------- Options object


def test_options_access_and_mapping_protocol(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA)
    assert opt["train"]["total_iter"] == opt.train.total_iter == 10
    assert "train" in opt and "nope" not in opt and "total_iter" in opt.train
    assert list(opt.keys())[:3] == ["name", "datasets", "network_g"]
    assert list(opt) == list(opt.keys())
    assert dict(opt.train.items())["milestones"] == ()
    assert isinstance(opt.datasets, Options) and isinstance(opt.datasets.train, Options)
    assert len(opt.network_g) == 3
    assert opt.train == {**opt.train.to_dict()}
    assert {**opt.network_g} == {"type": "NAFNet", "width": 16, "enc_blk_nums": (1, 1)}


def test_missing_keys_name_the_full_dotted_key(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA)
    with pytest.raises(AttributeError, match=r"no option 'train\.total_itr'; did you mean 'train\.total_iter'"):
        opt.train.total_itr  # noqa: B018
    with pytest.raises(KeyError, match=r"datasets\.train\.nothing"):
        opt["datasets"]["train"]["nothing"]  # noqa: B018
    with pytest.raises(AttributeError, match=r"no option 'network_g\.enc_blk_nums\.a\[0\]\.c'"):
        Options({"a": [{"b": 1}]}, prefix="network_g.enc_blk_nums").a[0].c  # noqa: B018


def test_options_are_read_only(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA)
    with pytest.raises(AttributeError, match=r"read-only.*train\.total_iter"):
        opt.train.total_iter = 5
    with pytest.raises(TypeError, match="read-only"):
        opt["name"] = "other"
    with pytest.raises(AttributeError, match="read-only"):
        del opt.name
    with pytest.raises(TypeError, match="read-only"):
        del opt["name"]
    with pytest.raises(AttributeError):
        opt.network_g.enc_blk_nums.append(3)  # lists come back as tuples
    assert opt.train.total_iter == 10 and opt.network_g.enc_blk_nums == (1, 1)


def test_to_dict_is_an_independent_plain_copy(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA)
    data = opt.to_dict()
    assert type(data) is dict and type(data["network_g"]["enc_blk_nums"]) is list
    data["train"]["total_iter"] = 99
    data["network_g"]["enc_blk_nums"].append(7)
    assert opt.train.total_iter == 10 and opt.network_g.enc_blk_nums == (1, 1)
    source = {"a": {"b": [1]}}
    view = Options(source)
    source["a"]["b"].append(2)
    assert view.a.b == (1,)  # the constructor copies its input


def test_options_pickle_and_copy_round_trip(minimal: Path) -> None:
    opt = load_options(minimal, SCHEMA)
    for clone in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt), copy.copy(opt)):
        assert isinstance(clone, Options) and clone == opt and clone.train.total_iter == 10
    assert pickle.loads(pickle.dumps(opt.train)).to_dict() == opt.train.to_dict()


def test_options_from_dict(minimal: Path) -> None:
    raw = yaml.safe_load(MINIMAL)
    opt = options_from_dict(raw, SCHEMA, ["train.total_iter=3"])
    assert opt.train.total_iter == 3 and opt.train.lr == pytest.approx(1e-3)
    with pytest.raises(OptionsError, match=r"<dict>"):
        options_from_dict({**raw, "nmae": "x"}, SCHEMA)


# --------------------------------------------------------------------- saving


def test_save_round_trip(minimal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TD_ROOT", "/srv")
    opt = load_options(minimal, SCHEMA, ["datasets.train.dataroot_gt=${TD_ROOT}/gt", "train.lr=2e-4"])
    out = save_options(opt, tmp_path / "experiments" / "exp" / "exp.yml")
    assert out.is_file()
    assert yaml.safe_load(out.read_text())["datasets"]["train"]["dataroot_gt"] == "/srv/gt"
    again = load_options(out, SCHEMA)
    assert again == opt and again.train.lr == pytest.approx(2e-4)
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp.yml"]  # no temp files left


def test_save_is_atomic_on_failure(minimal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.yml"
    target.write_text("previous: 1\n")
    opt = load_options(minimal, SCHEMA)

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_options(opt, target)
    monkeypatch.undo()
    assert target.read_text() == "previous: 1\n"
    assert [p.name for p in tmp_path.iterdir() if p.name != "exp.yml"] == ["out.yml"]
    save_options(opt.to_dict(), target)
    assert yaml.safe_load(target.read_text())["name"] == "exp"


# --------------------------------------------------------------------- command line


def test_add_option_arguments(minimal: Path) -> None:
    parser = add_option_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["-opt", str(minimal), "--set", "a=1", "--set", "b.c=2"])
    assert args.opt == str(minimal) and args.set == ["a=1", "b.c=2"]
    assert parser.parse_args(["--opt", "x.yml"]).set == []  # the default list is not shared
    with pytest.raises(SystemExit):
        parser.parse_args([])


def test_parse_options(minimal: Path) -> None:
    opt = parse_options(["-opt", str(minimal), "--set", "train.total_iter=4", "--set", "name=cli"], SCHEMA, "test")
    assert (opt.train.total_iter, opt.name) == (4, "cli")
    with pytest.raises(OptionsError, match="--set"):
        parse_options(["-opt", str(minimal), "--set", "train.totl_iter=4"], SCHEMA)


# --------------------------------------------------------------------- package layout


def test_package_exports_exactly_the_public_api() -> None:
    import textualdeg.options as package

    assert sorted(package.__all__) == sorted([
        "REQUIRED", "Field", "ListOf", "MapOf", "Options", "OptionsError", "Section", "add_option_arguments",
        "describe_options", "load_options", "options_from_dict", "parse_options", "save_options",
    ])
    assert all(getattr(package, name) is not None for name in package.__all__)
    assert pickle.loads(pickle.dumps(REQUIRED)) is REQUIRED  # the sentinel survives its move to schema.py

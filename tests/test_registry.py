"""Tests for textualdeg.registry: registration forms, lookup errors, build.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations", arXiv:2312.17334.
"""

from __future__ import annotations

import pytest

from textualdeg.registry import (
    ARCH_REGISTRY,
    DATASET_REGISTRY,
    LOSS_REGISTRY,
    SCHEDULER_REGISTRY,
    Registry,
)


class Net:
    """A stand-in arch with typed keyword arguments."""

    def __init__(self, width: int = 8, depth: int = 2) -> None:
        self.width = width
        self.depth = depth


def test_decorator_forms_and_direct_call() -> None:
    reg = Registry("arch")

    @reg.register()
    class Plain:
        pass

    @reg.register(name="AuthorsName")
    class Renamed:
        pass

    returned = reg.register(Net)
    assert returned is Net  # the decorator hands the class back unchanged
    assert reg.get("Plain") is Plain
    assert reg.get("AuthorsName") is Renamed
    assert "Renamed" not in reg  # registered under the alias only
    assert reg.get("Net") is Net


def test_same_class_under_two_names() -> None:
    reg = Registry("arch")
    reg.register(Net)
    reg.register(Net, name="NetAlias")
    assert reg.get("Net") is reg.get("NetAlias") is Net


def test_duplicate_name_is_an_error() -> None:
    reg = Registry("arch")
    reg.register(Net)

    class Other:
        pass

    with pytest.raises(KeyError, match=r"arch 'Net' is already registered.*test_registry"):
        reg.register(Other, name="Net")
    with pytest.raises(KeyError, match="already registered"):
        reg.register(Net)
    assert reg.get("Net") is Net  # the first registration is kept


def test_unknown_name_lists_registered_names() -> None:
    reg = Registry("dataset")
    reg.register(Net, name="Paired")
    reg.register(Net, name="Folder")
    with pytest.raises(KeyError, match=r"unknown dataset 'Pairedd'; registered datasets: Folder, Paired"):
        reg.get("Pairedd")
    with pytest.raises(KeyError, match=r"\(none\)"):
        Registry("loss").get("L1Loss")


def test_no_suffix_retry() -> None:
    reg = Registry("arch")
    reg.register(Net, name="Net_basicsr")
    with pytest.raises(KeyError):
        reg.get("Net")


def test_build_pops_type_and_passes_kwargs() -> None:
    reg = Registry("arch")
    reg.register(Net)
    spec = {"type": "Net", "width": 16}
    net = reg.build(spec, depth=5)
    assert isinstance(net, Net) and (net.width, net.depth) == (16, 5)
    assert spec == {"type": "Net", "width": 16}  # the caller's spec is not mutated
    with pytest.raises(KeyError, match="needs a 'type' key"):
        reg.build({"width": 1})
    with pytest.raises(TypeError, match=r"cannot build arch 'Net' with \['widht'\]"):
        reg.build({"type": "Net", "widht": 3})
    with pytest.raises(KeyError, match="unknown arch 'Nett'"):
        reg.build({"type": "Nett"})


def test_build_accepts_read_only_options() -> None:
    from textualdeg.options import Options

    reg = Registry("arch")
    reg.register(Net)
    net = reg.build(Options({"network_g": {"type": "Net", "width": 4}}).network_g)
    assert net.width == 4


def test_contains_keys_iter_repr() -> None:
    reg = Registry("lr scheduler")
    reg.register(Net, name="b")
    reg.register(Net, name="a")
    assert "a" in reg and "c" not in reg
    assert reg.keys() == ["a", "b"] and list(reg) == ["a", "b"]
    assert repr(reg) == "Registry('lr scheduler', ['a', 'b'])"


def test_module_registries_are_distinct() -> None:
    registries = [ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, SCHEDULER_REGISTRY]
    assert len({id(r) for r in registries}) == 4
    assert [repr(r).split(",")[0] for r in registries] == [
        "Registry('arch'",
        "Registry('dataset'",
        "Registry('loss'",
        "Registry('lr scheduler'",
    ]


def test_build_names_unknown_and_missing_arguments_and_the_arch() -> None:
    class Needs:
        def __init__(self, depth: int, width: int = 8) -> None:
            self.depth, self.width = depth, width

    reg = Registry("arch")
    reg.register(Net)
    reg.register(Needs)
    with pytest.raises(TypeError, match=r"arch 'Net'.*unknown argument 'widht' \(did you mean 'width'\?\)"):
        reg.build({"type": "Net", "widht": 3})
    with pytest.raises(TypeError, match=r"arch 'Needs'.*missing argument 'depth'; it takes: depth, width"):
        reg.build({"type": "Needs", "width": 4})
    assert reg.build({"type": "Needs", "depth": 2}).depth == 2


def test_build_names_the_arch_of_a_bad_value() -> None:
    """A constructor's ValueError names the argument; build adds the type (subclasses pass as raised)."""

    class Checked:
        def __init__(self, depth: int = 1) -> None:
            if depth < 1:
                raise ValueError(f"depth must be >= 1, got {depth}")

    class Special(ValueError):
        pass

    class Raises:
        def __init__(self) -> None:
            raise Special("kept as raised")

    reg = Registry("arch")
    reg.register(Checked)
    reg.register(Raises)
    with pytest.raises(ValueError, match=r"^cannot build arch 'Checked': depth must be >= 1, got 0$") as info:
        reg.build({"type": "Checked", "depth": 0})
    assert type(info.value.__cause__) is ValueError
    with pytest.raises(Special, match="^kept as raised$"):
        reg.build({"type": "Raises"})

"""The one registry: lazy ``module:object`` entries, "did you mean" errors, base-class checks, parameters."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from shapley_svc.errors import ConfigError, ModelLoadError
from shapley_svc.estimators import REGISTRY as ESTIMATORS
from shapley_svc.estimators.stopping import STOPPING_RULES
from shapley_svc.model.layouts import LAYOUTS, Layout
from shapley_svc.registry import Entry, Registry
from shapley_svc.values import REGISTRY as VALUE_FUNCTIONS


class Shape:
    """A base class for the test registry."""


@dataclass
class Circle(Shape):
    radius: float
    colour: str = "red"


def circle_registry() -> Registry[Shape]:
    return Registry(
        "shape",
        Shape,
        {
            "circle": Entry(f"{__name__}:Circle", "round", defaults={"colour": "blue"}),
            "unit_circle": Entry(f"{__name__}:Circle", "radius 1", bound={"radius": 1.0}),
            "not_a_shape": Entry("shapley_svc.model.layouts:Layout", "a layout"),
        },
        aliases={"default": "circle"},
    )


def test_entries_build_with_defaults_bound_options_and_aliases() -> None:
    shapes = circle_registry()
    assert shapes.build("default", params={"radius": 2.0}) == Circle(2.0, "blue")
    assert shapes.build("circle", params={"radius": 2.0, "colour": "green"}) == Circle(2.0, "green")
    assert shapes.build("unit_circle") == Circle(1.0, "red")
    assert shapes.parameters("unit_circle") == ("colour",), "a bound option is not the caller's to give"
    assert list(shapes) == ["circle", "unit_circle", "not_a_shape"] and "default" in shapes
    assert shapes.names() == ("default", "circle", "unit_circle", "not_a_shape")


def test_unknown_names_and_parameters_are_errors_with_the_closest_names() -> None:
    shapes = circle_registry()
    with pytest.raises(ConfigError, match=r"unknown shape 'circel': did you mean 'circle'\?"):
        shapes.build("circel")
    with pytest.raises(ConfigError, match=r"does not take \['raduis'\] \(did you mean 'radius'\?\)"):
        shapes.build("circle", params={"raduis": 2.0})
    with pytest.raises(ConfigError, match=r"rejected its parameters \{\}.*it needs \['radius'\]"):
        shapes.build("circle")
    with pytest.raises(ConfigError, match="is not a Shape"):
        shapes.build("not_a_shape")


def test_entries_are_imported_only_when_used() -> None:
    sys.modules.pop("shapley_svc.estimators.exact", None)
    assert "exact" in ESTIMATORS and "shapley_svc.estimators.exact" not in sys.modules
    ESTIMATORS.load("exact")
    assert "shapley_svc.estimators.exact" in sys.modules


def test_the_package_registries_share_the_mechanism() -> None:
    assert ESTIMATORS.key("default") == "structured_gp"
    assert isinstance(LAYOUTS["llama"], Layout)
    with pytest.raises(ModelLoadError, match="unsupported architecture 'gpt2'"):
        LAYOUTS.load("gpt2")
    assert "max_evaluations" in STOPPING_RULES and "arc_easy" in VALUE_FUNCTIONS
    with pytest.raises(ConfigError, match="did you mean 'stderr_below'"):
        STOPPING_RULES.load("stderr_bellow")

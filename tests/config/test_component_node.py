"""`{type_hint, config}` nodes: type_hint lookup by name, config validated against the registered model."""

import pytest
from pydantic import BaseModel, ValidationError

from llm_gym.assembly import make_registry
from llm_gym.optim.optimizers import AdamWConfig
from llm_gym.registry.component import Component, ComponentNode
from llm_gym.registry.lookup_enum import LookupEnum


class Colour(LookupEnum):
    RED = "red"
    DarkBlue = "dark_blue"


@pytest.mark.parametrize("query", [Colour.DarkBlue, "dark_blue", "DarkBlue", "darkblue", "DARKBLUE"])
def test_lookup_enum_by_value_name_or_case_insensitive_name(query):
    assert Colour(query) is Colour.DarkBlue


@pytest.mark.parametrize("query", ["blue", "", 3, None])
def test_lookup_enum_unknown_names_raise(query):
    with pytest.raises(ValueError):
        Colour(query)


REGISTRY = make_registry()


class Holder(BaseModel):
    optimizer: Component("optimizer")
    lr_scheduler: Component("lr_scheduler")


SCHEDULE = {"type_hint": "StepLR", "config": {"step_size": 3}}


def test_type_hint_is_case_insensitive_and_canonicalised():
    holder = REGISTRY.validate(
        Holder, {"optimizer": {"type_hint": "adamw", "config": {"lr": 0.1}}, "lr_scheduler": SCHEDULE}
    )
    assert isinstance(holder.optimizer, ComponentNode)
    assert holder.optimizer.type_hint.name == "AdamW"
    assert holder.optimizer.register_key == "optimizer"
    assert isinstance(holder.optimizer.config, AdamWConfig)


def test_config_may_be_omitted_when_every_field_has_a_default():
    holder = REGISTRY.validate(
        Holder, {"optimizer": {"type_hint": "SGD", "config": {"lr": 0.1}}, "lr_scheduler": {"type_hint": "ConstantLR"}}
    )
    assert holder.lr_scheduler.config.factor == 1.0


def test_config_is_required_when_a_field_has_no_default():
    with pytest.raises(ValidationError) as caught:
        REGISTRY.validate(Holder, {"optimizer": {"type_hint": "SGD"}, "lr_scheduler": SCHEDULE})
    assert [error["loc"] for error in caught.value.errors()] == [("optimizer", "config")]


def test_a_typo_gives_one_error_not_one_per_registered_class():
    with pytest.raises(ValidationError) as caught:
        REGISTRY.validate(
            Holder,
            {"optimizer": {"type_hint": "SGD", "config": {"lr": 0.1, "momentun": 0.9}}, "lr_scheduler": SCHEDULE},
        )
    errors = caught.value.errors()
    assert [(error["loc"], error["type"]) for error in errors] == [
        (("optimizer", "config", "momentun"), "extra_forbidden")
    ]


def test_node_has_no_other_keys():
    with pytest.raises(ValidationError) as caught:
        REGISTRY.validate(
            Holder, {"optimizer": {"type_hint": "SGD", "config": {"lr": 0.1}, "kwargs": {}}, "lr_scheduler": SCHEDULE}
        )
    assert [error["loc"] for error in caught.value.errors()] == [("optimizer", "kwargs")]


def test_serialises_back_to_the_yaml_form():
    holder = REGISTRY.validate(
        Holder, {"optimizer": {"type_hint": "sgd", "config": {"lr": 0.1}}, "lr_scheduler": SCHEDULE}
    )
    dumped = holder.model_dump(mode="json")
    assert dumped["optimizer"] == {
        "type_hint": "SGD",
        "config": {"lr": 0.1, "weight_decay": 0.0, "momentum": 0.0, "nesterov": False, "foreach": None},
    }
    assert REGISTRY.validate(Holder, dumped) == holder


def test_unregistered_key_says_none_registered():
    class Other(BaseModel):
        widget: Component("no_such_register_key")

    with pytest.raises(ValidationError) as caught:
        REGISTRY.validate(Other, {"widget": {"type_hint": "Anything", "config": {}}})
    assert "valid names: none registered" in caught.value.errors()[0]["msg"]

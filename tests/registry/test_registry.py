"""ResolverRegistry: registering classes, building them from validated nodes, nesting, user components."""

import textwrap

import pytest
from class_resolver import ClassResolver
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, ValidationError

from llm_gym.assembly import make_registry
from llm_gym.config.loading import load_config
from llm_gym.errors import ConfigError
from llm_gym.registry import ComponentFactory, ResolverRegistry, config_model_from_signature, register_component
from llm_gym.registry.component import Component
from toy_config import TOY_YAML, ToyConfig


class Norm:
    def __init__(self, dim: int, eps: float = 1e-5):
        self.dim, self.eps = dim, eps


class NormConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eps: PositiveFloat = 1e-5


class Block:
    def __init__(self, dim: int, norm: ComponentFactory, num_norms: int = 2, name: str = "block"):
        self.norm_factory = norm
        self.norms = [norm(dim=dim) for _ in range(num_norms)]
        self.name = name


class BlockConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: PositiveInt
    norm: Component("toy_norm")
    num_norms: PositiveInt = 2


class Stack:
    def __init__(self, blocks: list):
        self.blocks = [factory() for factory in blocks]


class StackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blocks: list[Component("toy_block")]


def validate(registry: ResolverRegistry, register_key: str, node: dict):
    class Holder(BaseModel):
        component: Component(register_key)

    return registry.validate(Holder, {"component": node}).component


@pytest.fixture
def registry(fresh_registry):
    fresh_registry.register_component("toy_norm", "Norm", Norm, NormConfig)
    fresh_registry.register_component("toy_block", "Block", Block, BlockConfig)
    fresh_registry.register_component("toy_stack", "Stack", Stack, StackConfig)
    return fresh_registry


def test_build_component_by_config_passes_config_and_extra_kwargs(registry):
    node = validate(registry, "toy_norm", {"type_hint": "Norm", "config": {"eps": 0.5}})
    norm = registry.build_component_by_config(node, extra_kwargs={"dim": 8})
    assert isinstance(norm, Norm)
    assert (norm.dim, norm.eps) == (8, 0.5)


def test_extra_kwargs_are_required_when_the_constructor_needs_them(registry):
    node = validate(registry, "toy_norm", {"type_hint": "Norm", "config": {}})
    with pytest.raises(ConfigError, match="cannot build 'Norm': missing a required argument: 'dim'"):
        registry.build_component_by_config(node)


def test_nested_component_arrives_as_a_factory_the_parent_calls(registry):
    node = validate(
        registry,
        "toy_block",
        {"type_hint": "Block", "config": {"dim": 4, "norm": {"type_hint": "Norm", "config": {"eps": 0.1}}}},
    )
    block = registry.build_component_by_config(node, extra_kwargs={"name": "first"})
    assert isinstance(block.norm_factory, ComponentFactory)
    assert repr(block.norm_factory) == "ComponentFactory(toy_norm:Norm)"
    assert [(norm.dim, norm.eps) for norm in block.norms] == [(4, 0.1), (4, 0.1)]
    assert block.norms[0] is not block.norms[1]
    assert block.name == "first"


def test_nested_components_in_a_list_arrive_as_factories(registry):
    block = {"type_hint": "Block", "config": {"dim": 2, "num_norms": 1, "norm": {"type_hint": "Norm"}}}
    node = validate(registry, "toy_stack", {"type_hint": "Stack", "config": {"blocks": [block, block]}})
    stack = registry.build_component_by_config(node)
    assert [len(block.norms) for block in stack.blocks] == [1, 1]


def test_nested_component_errors_name_the_full_path(registry):
    with pytest.raises(ValidationError) as caught:
        validate(
            registry,
            "toy_block",
            {"type_hint": "Block", "config": {"dim": 4, "norm": {"type_hint": "Norm", "config": {"eps": -1}}}},
        )
    assert caught.value.errors()[0]["loc"] == ("component", "config", "norm", "config", "eps")


def test_build_component_by_key_query(registry):
    norm = registry.build_component_by_key_query("toy_norm", "norm", extra_kwargs={"dim": 3, "eps": 0.2})
    assert (norm.dim, norm.eps) == (3, 0.2)


def test_build_component_by_key_query_unknown_type_hint_lists_valid_names(registry):
    with pytest.raises(
        ConfigError, match=r"unknown type_hint 'Norn' for 'toy_norm'; did you mean 'Norm'\? valid names: Norm$"
    ):
        registry.build_component_by_key_query("toy_norm", "Norn")
    with pytest.raises(ConfigError, match="valid names: none registered"):
        registry.build_component_by_key_query("no_such_key", "Norm")


def test_build_component_by_key_query_with_a_wrong_argument(registry):
    with pytest.raises(ConfigError, match="cannot build 'Norm': got an unexpected keyword argument 'size'"):
        registry.build_component_by_key_query("toy_norm", "Norm", extra_kwargs={"dim": 3, "size": 2})


class Linear:
    def __init__(self, params, scale: float = 1.0):
        self.params, self.scale = params, scale


class Quadratic:
    def __init__(self, params, power: int = 2):
        self.params, self.power = params, power


class QuadraticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    power: PositiveInt = 2


def test_add_resolver_registers_every_class_of_a_class_resolver(fresh_registry):
    fresh_registry.add_resolver(
        "toy_curve",
        ClassResolver([Linear, Quadratic], base=object),
        {"Quadratic": QuadraticConfig},
        injected=["params"],
    )
    assert fresh_registry.type_hint_names("toy_curve") == ["Linear", "Quadratic"]
    assert fresh_registry.find_entry("toy_curve", "Quadratic").config_model is QuadraticConfig
    linear = fresh_registry.build_component_by_config(
        validate(fresh_registry, "toy_curve", {"type_hint": "Linear", "config": {"scale": 2.0}}),
        extra_kwargs={"params": [1]},
    )
    assert (linear.scale, linear.params) == (2.0, [1])
    with pytest.raises(ValidationError):  # the derived model knows nothing of `params`: it is injected
        validate(fresh_registry, "toy_curve", {"type_hint": "Linear", "config": {"params": [1]}})
    quadratic = fresh_registry.build_component_by_key_query("toy_curve", "Quadratic", {"params": [], "power": 3})
    assert quadratic.power == 3


def test_add_resolver_refuses_config_models_for_classes_it_lacks(fresh_registry):
    with pytest.raises(ValueError, match="Cubic"):
        fresh_registry.add_resolver("toy_curve", ClassResolver([Linear], base=object), {"Cubic": QuadraticConfig})


def test_registering_a_type_hint_twice_is_refused(registry):
    with pytest.raises(ValueError, match="'Norm' is already registered under 'toy_norm'"):
        registry.register_component("toy_norm", "Norm", Norm, NormConfig)


def test_two_type_hints_may_share_a_class(registry):
    registry.register_component("toy_norm", "WideNorm", Norm, NormConfig)
    node = validate(registry, "toy_norm", {"type_hint": "WideNorm"})
    assert isinstance(registry.build_component_by_config(node, {"dim": 1}), Norm)


def test_node_validated_before_a_later_registration_still_builds(registry):
    node = validate(registry, "toy_norm", {"type_hint": "Norm"})
    registry.register_component("toy_norm", "LateNorm", Norm, NormConfig)
    assert registry.build_component_by_config(node, {"dim": 5}).dim == 5


def test_config_model_from_signature_is_strict_and_skips_injected_arguments():
    model = config_model_from_signature(Block, injected=["norm"])
    assert list(model.model_fields) == ["dim", "num_norms", "name"]
    assert model(dim=3).num_norms == 2
    with pytest.raises(ValidationError):
        model(dim=3, extra=1)
    with pytest.raises(ValidationError):
        model()


# ---- components users register without editing llm_gym ------------------------------------------------


class ScaledConstant:
    def __init__(self, optimizer, scale: float):
        self.optimizer, self.scale = optimizer, scale


def test_user_component_via_the_python_api(fresh_registry, write_config):
    class ScaledConstantConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: PositiveFloat

    decorated = register_component("lr_scheduler", "ScaledConstant", config_model=ScaledConstantConfig)(ScaledConstant)
    assert decorated is ScaledConstant
    text = TOY_YAML.replace("type_hint: LinearWarmupCosineDecay", "type_hint: ScaledConstant").replace(
        "    warmup_steps: ${training.warmup_steps}\n    total_steps: ${training.max_steps}", "    scale: 0.5"
    )
    config, _ = load_config(write_config(text), ToyConfig, registry=fresh_registry)
    schedule = fresh_registry.build_component_by_config(config.lr_scheduler, extra_kwargs={"optimizer": "opt"})
    assert (schedule.scale, schedule.optimizer) == (0.5, "opt")


def test_user_component_via_the_decorator_defaults(fresh_registry):
    @register_component("toy_widget", injected=["optimizer"])
    class Widget:
        def __init__(self, optimizer, size: int = 3):
            self.optimizer, self.size = optimizer, size

    fresh_registry.add_declared()
    node = validate(fresh_registry, "toy_widget", {"type_hint": "Widget", "config": {"size": 4}})
    assert fresh_registry.build_component_by_config(node, {"optimizer": None}).size == 4


USER_MODULE = """
from pydantic import BaseModel, ConfigDict, Field
from torch.optim.lr_scheduler import LambdaLR

from llm_gym.registry import register_component


class HalvingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int = Field(ge=1)


@register_component("lr_scheduler", "Halving", config_model=HalvingConfig)
class Halving(LambdaLR):
    def __init__(self, optimizer, every):
        super().__init__(optimizer, lambda step: 0.5 ** (step // every))
"""


def test_user_component_via_user_modules_beside_the_yaml(fresh_registry, write_config, isolated_imports):
    import torch

    text = "user_modules: [my_schedules]\n" + TOY_YAML.replace(
        "type_hint: LinearWarmupCosineDecay", "type_hint: halving"
    ).replace("    warmup_steps: ${training.warmup_steps}\n    total_steps: ${training.max_steps}", "    every: 2")
    path = write_config(text)
    (path.parent / "my_schedules.py").write_text(textwrap.dedent(USER_MODULE))

    config, _ = load_config(path, ToyConfig, registry=fresh_registry)
    assert config.lr_scheduler.type_hint.name == "Halving"
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = fresh_registry.build_component_by_config(config.optimizer, {"params": [parameter]})
    schedule = fresh_registry.build_component_by_config(config.lr_scheduler, {"optimizer": optimizer})
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([3e-4, 3e-4, 1.5e-4, 1.5e-4])


def test_user_module_values_are_validated_by_its_model(fresh_registry, write_config, isolated_imports):
    text = "user_modules: [my_schedules]\n" + TOY_YAML.replace(
        "type_hint: LinearWarmupCosineDecay", "type_hint: Halving"
    ).replace("    warmup_steps: ${training.warmup_steps}\n    total_steps: ${training.max_steps}", "    every: 0")
    path = write_config(text)
    (path.parent / "my_schedules.py").write_text(textwrap.dedent(USER_MODULE))
    with pytest.raises(ConfigError, match=r"lr_scheduler\.config\.every: Input should be greater than or equal to 1"):
        load_config(path, ToyConfig, registry=fresh_registry)


def test_validation_without_a_registry_says_how_to_give_one():
    class Holder(BaseModel):
        component: Component("optimizer")

    with pytest.raises(RuntimeError, match=r"registry\.validate\(Model, data\)"):
        Holder.model_validate({"component": {"type_hint": "SGD", "config": {"lr": 0.1}}})


def test_a_registry_holds_only_what_was_declared_before_it_or_added(fresh_registry):
    @register_component("toy_widget")
    class Gadget:
        def __init__(self, size: int = 1):
            self.size = size

    assert fresh_registry.type_hint_names("toy_widget") == []
    assert make_registry().type_hint_names("toy_widget") == ["Gadget"]
    fresh_registry.add_declared()
    fresh_registry.add_declared()  # once is enough: adding again is no duplicate
    assert fresh_registry.type_hint_names("toy_widget") == ["Gadget"]


def test_a_user_module_declaring_a_taken_type_hint_is_a_config_error(fresh_registry, write_config, isolated_imports):
    path = write_config("user_modules: [my_optimizers]\n" + TOY_YAML)
    (path.parent / "my_optimizers.py").write_text(
        "from llm_gym.registry import register_component\n"
        "@register_component('optimizer', 'AdamW')\nclass MyAdamW:\n    def __init__(self, params, lr: float): ...\n"
    )
    with pytest.raises(ConfigError, match=r"^user_modules: type_hint 'AdamW' is already registered under 'optimizer'$"):
        load_config(path, ToyConfig, registry=fresh_registry)


class Wide:
    """Built from its config model whole; its nested norm arrives as a factory under the field's name."""

    def __init__(self, config: "WideConfig", norm: ComponentFactory, scale: float):
        self.config, self.norm, self.scale = config, norm(dim=config.width), scale


class WideConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: PositiveInt = 3
    norm: Component("toy_norm")


def test_a_constructor_taking_its_config_model_receives_it_whole(registry):
    registry.register_component("toy_wide", "Wide", Wide, WideConfig)
    node = validate(registry, "toy_wide", {"type_hint": "Wide", "config": {"norm": {"type_hint": "Norm"}}})
    wide = registry.build_component_by_config(node, extra_kwargs={"scale": 2.0})
    assert wide.config is node.config
    assert (wide.norm.dim, wide.scale) == (3, 2.0)

"""Llama 3.1's RoPE frequency scaling (``model.config.rope_scaling``): the three frequency bands, export parity,
and the config rules."""

import math
import re

import pytest
import torch
from model_builders import LLAMA_STYLE, TINY, build, model_node, random_tokens

from llm_gym.errors import ConfigError
from llm_gym.inference.hf_conversion import to_hf
from llm_gym.models.positional import Llama3RopeScaling

SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256}


def test_short_wavelengths_are_kept_long_ones_slowed_and_those_between_blended():
    frequencies = torch.tensor([1.0, 2 * math.pi / 128, 2 * math.pi / 1024])  # wavelengths 6.3, 128, 1024
    scaled = Llama3RopeScaling(**SCALING).scale(frequencies)
    smooth = (256 / 128 - 1.0) / (4.0 - 1.0)
    expected = [1.0, (1 - smooth) * frequencies[1] / 8 + smooth * frequencies[1], frequencies[2] / 8]
    torch.testing.assert_close(scaled, torch.tensor(expected))


def test_a_scaled_model_exports_with_the_same_logits():
    transformers = pytest.importorskip("transformers")
    model = build({**LLAMA_STYLE, "rope_scaling": SCALING}, sequence_length=96).eval()
    config, state_dict = to_hf(model)
    assert config.to_dict().get("rope_scaling", config.to_dict().get("rope_parameters"))["rope_type"] == "llama3"
    hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    hf.load_state_dict(state_dict, strict=True)
    tokens = random_tokens(model, length=96)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)
        unscaled = build(LLAMA_STYLE, sequence_length=96).eval()
        unscaled.load_state_dict(model.state_dict())
        assert not torch.allclose(unscaled(tokens), model(tokens), atol=1e-4)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"positional": "learned", "rope_theta": 10_000.0, "rope_scaling": SCALING},
            "rope_scaling is only used with positional: rope",
        ),
        ({"rope_scaling": {**SCALING, "high_freq_factor": 1.0}}, "high_freq_factor (1.0) must exceed low_freq_factor"),
        ({"rope_scaling": {"factor": 8.0}}, "original_max_position_embeddings"),
    ],
)
def test_bad_rope_scaling_is_refused(config, message):
    with pytest.raises((ConfigError, ValueError), match=re.escape(message)):
        model_node(**{**TINY, **LLAMA_STYLE, **config})

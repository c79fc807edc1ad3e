"""Parameter counts and FLOPs against hand-computed values; the shipped model sections; the GPU peak table."""

from pathlib import Path

import pytest
import torch
from model_builders import GPT2_STYLE, LLAMA_STYLE, TINY, build, model_node, on_meta_device, random_tokens
from omegaconf import OmegaConf

from llm_gym.models.flops import describe_model, flops_per_token, num_parameters, peak_flops_per_second

SECTIONS = Path(__file__).parents[2] / "config_files" / "model_sections"


def section_node(name: str, sequence_length: int):
    raw = OmegaConf.merge({"training": {"sequence_length": sequence_length}}, OmegaConf.load(SECTIONS / f"{name}.yaml"))
    model = OmegaConf.to_container(raw, resolve=True)["model"]
    return model_node(**model["config"])


def test_gpt2_124m_section_counts_and_flops():
    model = on_meta_device(section_node("gpt2_124m", 1024))
    assert num_parameters(model) == 124_439_808
    # Without the 1024 × 768 position embeddings: N = 123,653,376.
    assert num_parameters(model, exclude_position_embeddings=True) == 124_439_808 - 1024 * 768
    assert flops_per_token(model, 1024) == 6 * 123_653_376 + 12 * 12 * 12 * 64 * 1024 == 855_166_464
    assert describe_model(model, 1024) == [
        "model parameters: 124,439,808 (123,653,376 without position embeddings)",
        "training FLOPs per token: 855,166,464 (6N + 12·L·H·Q·T)",
    ]


def test_llama_1b_section_has_the_size_of_llama_3_2_1b():
    model = on_meta_device(section_node("llama_1b", 2048))
    embedding = 128_256 * 2048
    layer = 2 * 2048 + 2048 * 2048 * 2 + 2048 * 512 * 2 + 3 * 2048 * 8192
    assert num_parameters(model) == embedding + 16 * layer + 2048 == 1_235_814_400
    assert flops_per_token(model, 2048) == 6 * 1_235_814_400 + 12 * 16 * 32 * 64 * 2048


def test_tiny_cpu_section_builds_and_runs():
    node = section_node("tiny_cpu", 128)
    assert (
        num_parameters(on_meta_device(node))
        == 257 * 128 + 4 * (2 * 128 + 2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 352) + 128
    )
    model = build(node.config.model_dump(mode="json"))
    assert model(random_tokens(model, length=128)).shape == (2, 128, 257)


def test_untied_output_and_learned_positions_in_the_flops_formula():
    model = build(GPT2_STYLE, tie_embeddings=False)
    vocab, length, layers, dim, heads = TINY.values()
    n = num_parameters(model) - length * dim
    assert num_parameters(model, exclude_position_embeddings=True) == n
    assert flops_per_token(model, 8) == 6 * n + 12 * layers * heads * (dim // heads) * 8
    assert num_parameters(model) - num_parameters(build(GPT2_STYLE)) == vocab * dim


def test_rope_model_has_no_position_parameters():
    model = build(LLAMA_STYLE)
    assert num_parameters(model, exclude_position_embeddings=True) == num_parameters(model)


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA GeForce RTX 4090", 165.2e12),
        ("AMD Instinct MI300X", 1307.4e12),
    ],
)
def test_known_gpus_have_their_dense_bf16_peak(device_name, peak):
    assert peak_flops_per_second(device_name) == peak
    assert peak_flops_per_second(device_name, torch.float16) == peak


@pytest.mark.parametrize(
    "device_name", ["NVIDIA A10G", "NVIDIA H800", "NVIDIA A100X", "Tesla V100-SXM2-16GB", "", "cpu"]
)
def test_unknown_gpus_have_no_peak(device_name):
    assert peak_flops_per_second(device_name) is None


@pytest.mark.parametrize(
    "device_name", ["NVIDIA A100-SXM4-40GB MIG 1g.5gb", "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "NVIDIA H200 MIG 3g.71gb"]
)
def test_mig_slices_have_no_peak(device_name):
    """A slice has a fraction of the full GPU's compute; its name matches the full GPU's pattern."""
    assert peak_flops_per_second(device_name) is None


def test_no_peak_for_other_dtypes():
    assert peak_flops_per_second("NVIDIA H100 80GB HBM3", torch.float32) is None

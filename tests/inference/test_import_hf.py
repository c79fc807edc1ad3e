"""``llm_gym import_hf``: logits equal to transformers' for GPT-2 and Llama (sharded too), export → import →
export is the identity, the output warm-starts a run, and crafted model directories are refused."""

import json
import pickle

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from experiment_runs import TINY_CONFIG, llm_gym, read_metrics, tiny_overrides, write_byte_corpus
from llm_gym.checkpointing.warm_start import load_model_weights
from llm_gym.cli import main
from llm_gym.inference.hf_conversion import to_hf
from models.model_builders import GPT2_STYLE, LLAMA_STYLE, REGISTRY, build, model_node, random_tokens

transformers = pytest.importorskip("transformers")

GPT2 = {"vocab_size": 61, "n_positions": 16, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 80}
LLAMA = {"vocab_size": 61, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
         "rope_theta": 50_000.0}  # fmt: skip


# Llama 3.1/3.2's scaling, shrunk so that the tiny model's head dimension has slowed, blended and kept frequencies.
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 256}  # fmt: skip


def _hf_model(architecture: str, seed: int = 0, **config):
    torch.manual_seed(seed)
    if architecture == "gpt2":
        hf_config = transformers.GPT2Config(**{**GPT2, **config})
        model = transformers.GPT2LMHeadModel(hf_config)
    else:
        hf_config = transformers.LlamaConfig(**{**LLAMA, **config})
        model = transformers.LlamaForCausalLM(hf_config)
    with torch.no_grad():  # trained-looking weights: norms and biases away from their initial ones and zeros
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def _save(model, directory, **kwargs):
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return directory


def _import(model_dir, output_dir, *extra) -> None:
    result = CliRunner().invoke(
        main, ["import_hf", "--model_dir", str(model_dir), "--output_dir", str(output_dir), *extra]
    )
    assert result.exit_code == 0, result.output


def _load_imported(output_dir):
    section = yaml.safe_load((output_dir / "model.yaml").read_text())["model"]
    model = REGISTRY.build_component_by_config(model_node(**section["config"]))
    load_model_weights(model, output_dir)
    return model.eval()


@pytest.mark.parametrize(
    ("architecture", "config", "shard"),
    [
        ("gpt2", {}, None),
        ("gpt2", {"activation_function": "gelu", "tie_word_embeddings": False}, "20KB"),
        ("llama", {}, None),
        ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}, "20KB"),
        ("llama", {"rope_scaling": LLAMA3_SCALING, "max_position_embeddings": 512}, None),
    ],
    ids=["gpt2", "gpt2-untied-exact-gelu-sharded", "llama-gqa", "llama-tied-bias-sharded", "llama3-rope-scaling"],
)
def test_imported_logits_equal_the_hf_models(architecture, config, shard, tmp_path):
    hf = _hf_model(architecture, **config)
    model_dir = _save(hf, tmp_path / "hf", **({"max_shard_size": shard} if shard else {}))
    assert (model_dir / "model.safetensors.index.json").is_file() == bool(shard)
    _import(model_dir, tmp_path / "imported")
    model = _load_imported(tmp_path / "imported")
    tokens = random_tokens(model, batch=3, length=16 if architecture == "gpt2" else 64)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


LLAMA3_STYLE = {
    **LLAMA_STYLE,
    "rope_scaling": {key: value for key, value in LLAMA3_SCALING.items() if key != "rope_type"},
}


@pytest.mark.parametrize("style", [GPT2_STYLE, LLAMA_STYLE, LLAMA3_STYLE], ids=["gpt2", "llama", "llama3-rope"])
def test_export_import_export_is_the_identity(style, tmp_path):
    original = build(style, tie_embeddings=False, seed=5)
    hf_config, state_dict = to_hf(original)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config)
    hf.load_state_dict(state_dict, strict=True)
    _import(_save(hf, tmp_path / "hf"), tmp_path / "imported")
    imported = _load_imported(tmp_path / "imported")
    assert imported.state_dict().keys() == original.state_dict().keys()
    for name, tensor in original.state_dict().items():
        assert torch.equal(imported.state_dict()[name], tensor), name
    again_config, again_state = to_hf(imported)
    assert again_config.to_dict() == to_hf(original)[0].to_dict()  # from_config above set hf_config's dtype
    assert all(torch.equal(again_state[name], tensor) for name, tensor in state_dict.items())


@pytest.mark.slow
def test_the_output_directory_warm_starts_a_run(tmp_path):
    (tmp_path / "corpus").mkdir()
    corpus = write_byte_corpus(tmp_path / "corpus")
    hf = _hf_model("llama", vocab_size=257)
    _import(_save(hf, tmp_path / "hf"), tmp_path / "imported")
    # The model section composes over a shipped config's own, as its header says: defaults: [..., model.yaml].
    config = tmp_path / "continued.yaml"
    config.write_text(yaml.safe_dump({"defaults": [str(TINY_CONFIG), str(tmp_path / "imported" / "model.yaml")]}))
    experiment = tmp_path / "experiment"
    overrides = tiny_overrides(corpus, experiment, **{"training.max_steps": 1, "training.eval_at_start": "true",
                               "lr_scheduler.config.warmup_steps": 0,
                               "checkpointing.warm_start_from": tmp_path / "imported"})  # fmt: skip
    llm_gym("run", "--config_file_path", str(config), *overrides)
    step_0 = next(line for line in read_metrics(experiment / "metrics.jsonl") if line["split"] == "val")
    tokens = torch.from_numpy(
        __import__("numpy").fromfile(corpus / "val_byte.bin", dtype="uint16")[: 8 * 32 + 1].astype("int64")
    )
    with torch.no_grad():
        logits = hf(tokens[:-1].view(8, 32)).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[1:])
    assert step_0["step"] == 0 and step_0["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_the_tokenizer_is_copied(tmp_path):
    from tokenizers import Tokenizer, models

    model_dir = _save(_hf_model("gpt2"), tmp_path / "hf")
    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<|endoftext|>": 2}, unk_token="a"))
    tokenizer.save(str(model_dir / "tokenizer.json"))
    _import(model_dir, tmp_path / "imported")
    assert (tmp_path / "imported" / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()
    weights = load_file(tmp_path / "imported" / "model.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())


def _refused(model_dir, output_dir, message):
    result = CliRunner().invoke(main, ["import_hf", "--model_dir", str(model_dir), "--output_dir", str(output_dir)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not output_dir.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "this model is ['MistralForCausalLM']"),
        ({**LLAMA, "architectures": ["LlamaForCausalLM"], "rope_scaling": {"rope_type": "yarn", "factor": 8.0}},
         "RoPE scaling 'yarn'"),
        ({**LLAMA, "architectures": ["LlamaForCausalLM"], "rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
         "rope_scaling: 'original_max_position_embeddings' must be a positive integer"),
        ({**LLAMA, "architectures": ["LlamaForCausalLM"], "hidden_act": "gelu"}, "'hidden_act' is 'gelu'"),
        ({**LLAMA, "architectures": ["LlamaForCausalLM"], "head_dim": 16}, "'head_dim' is 16"),
        ({**LLAMA, "architectures": ["LlamaForCausalLM"], "mlp_bias": True}, "'mlp_bias' is True"),
        ({**LLAMA, "architectures": ["LlamaForCausalLM"], "num_hidden_layers": "2"}, "'num_hidden_layers' must be a"),
        ({**GPT2, "architectures": ["GPT2LMHeadModel"], "scale_attn_by_inverse_layer_idx": True},
         "'scale_attn_by_inverse_layer_idx' is True"),
        ({**GPT2, "architectures": ["GPT2LMHeadModel"], "n_head": 5}, "not divisible by 'n_head'"),
        ([1, 2], "expected a JSON object"),
    ],
    ids=["mistral", "yarn-rope", "llama3-rope-incomplete", "gelu-llama", "head-dim", "mlp-bias", "string-layers",
         "layer-scaled-attention", "heads", "list"],
)  # fmt: skip
def test_unsupported_configs_are_refused(config, message, tmp_path):
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config))
    _refused(model_dir, tmp_path / "imported", message)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    model_dir = _save(_hf_model("llama"), tmp_path / "hf")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    _refused(model_dir, tmp_path / "imported", "do not fit its config.json")
    weights = load_file(model_dir / "model.safetensors")
    save_file({**weights, "model.extra.weight": torch.zeros(2)}, model_dir / "model.safetensors")
    (model_dir / "config.json").write_text(json.dumps(config))
    _refused(model_dir, tmp_path / "imported", "no place for: model.extra.weight")
    del weights["model.norm.weight"]
    save_file(weights, model_dir / "model.safetensors")
    _refused(model_dir, tmp_path / "imported", "no tensor norm.weight")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_weight_files_are_data(tmp_path):
    marker = tmp_path / "PWNED"
    model_dir = _save(_hf_model("gpt2"), tmp_path / "hf")
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCode(marker)))
    _refused(model_dir, tmp_path / "imported", "pytorch_model.bin, a pickle, which can run code")
    (model_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    _refused(model_dir, tmp_path / "imported", "is not a readable safetensors file")
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"wte.weight": "../x.safetensors"}})
    )
    _refused(model_dir, tmp_path / "imported", "must be a .safetensors file name in")
    (model_dir / "model.safetensors.index.json").write_text("{broken")
    _refused(model_dir, tmp_path / "imported", "is not valid JSON")
    assert not marker.exists()


def test_a_non_empty_output_directory_is_kept_unless_forced(tmp_path):
    model_dir = _save(_hf_model("gpt2"), tmp_path / "hf")
    (tmp_path / "imported").mkdir()
    (tmp_path / "imported" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(
        main, ["import_hf", "--model_dir", str(model_dir), "--output_dir", str(tmp_path / "imported")]
    )
    assert result.exit_code == 2 and "not empty" in result.stderr
    assert (tmp_path / "imported" / "keep.txt").read_text() == "mine"
    _import(model_dir, tmp_path / "imported", "--force")
    assert sorted(path.name for path in (tmp_path / "imported").iterdir()) == ["model.safetensors", "model.yaml"]


def test_an_hf_directory_as_warm_start_source_says_to_import_it(tmp_path):
    model_dir = _save(_hf_model("gpt2"), tmp_path / "hf")
    model = build(GPT2_STYLE)
    with pytest.raises(Exception, match="convert it with llm_gym import_hf"):
        load_model_weights(model, model_dir / "model.safetensors")

"""Document masking and per-document positions: a packed sample trains as its documents would one by one."""

import functools

import pytest
import torch
import torch.nn.functional as F
from model_builders import GPT2_STYLE, LLAMA_STYLE, TINY, build

from llm_gym.assembly import make_registry
from llm_gym.data.collators import CausalLMCollator
from llm_gym.errors import ConfigError
from llm_gym.evaluation.language_modeling import language_modeling_totals
from llm_gym.models.attention import (
    AttentionKernelConfig,
    SDPAttention,
    SDPAttentionConfig,
    document_block_mask,
    document_causal_mask,
)
from llm_gym.models.contract import as_language_model
from llm_gym.models.positional import positions_within_documents
from llm_gym.registry.component import Component

END = 60  # the tiny models' last id stands for the end-of-document token
STYLES = {"gpt2": GPT2_STYLE, "llama": LLAMA_STYLE}
FLEX = SDPAttentionConfig(document_kernel="flex")


@functools.cache
def flex_compiles_here() -> bool:
    """Compiled FlexAttention on CPU needs inductor's C++ backend (a compiler)."""
    try:
        query = torch.randn(1, 1, 16, 16)
        SDPAttention(config=FLEX)(query, query, query, document_block_mask(torch.zeros(1, 16)))
    except Exception:
        return False
    return True


def needs_flex(kernel: str):
    if kernel == "flex" and not flex_compiles_here():
        pytest.skip("compiled FlexAttention does not run on this machine's CPU")


KERNELS = [pytest.param("sdpa", id="sdpa"), pytest.param("flex", id="flex", marks=pytest.mark.slow)]


def packed_sample(seed: int = 3) -> torch.Tensor:
    """Two rows of 17 tokens (16 inputs), documents ending inside, at the row's end and twice in a row."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, END, (2, 17), generator=generator)
    tokens[0, [4, 9, 10]] = END  # documents of 5, 5 and 1 tokens, then one running past the sample
    tokens[1, [6, 15]] = END  # the second ends on the last input
    return tokens


def documents_of(row: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, end)`` of each document among ``row``'s inputs, written out from the end tokens."""
    bounds, start = [], 0
    for index, token in enumerate(row[:-1].tolist()):
        if token == END:
            bounds.append((start, index + 1))
            start = index + 1
    return bounds + ([(start, len(row) - 1)] if start < len(row) - 1 else [])


def masked_model(style: str, kernel: str, positions: str):
    return build(
        STYLES[style],
        document_masking=True,
        document_positions=positions,
        attention={"type_hint": "SDPAttention", "config": {"document_kernel": kernel}},
    ).eval()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("style", STYLES)
def test_a_packed_sample_has_the_loss_of_its_documents_one_by_one(style, kernel):
    needs_flex(kernel)
    model = masked_model(style, kernel, "restart")
    batch = CausalLMCollator(end_of_document_id=END)(list(packed_sample()))
    with torch.no_grad():
        packed_logits = model(batch.inputs, document_ids=batch.document_ids)
        packed_loss = F.cross_entropy(packed_logits.flatten(0, 1), batch.targets.flatten())
        loss_sum, tokens = torch.zeros((), dtype=torch.float64), 0
        for row in range(batch.inputs.shape[0]):
            for start, end in documents_of(packed_sample()[row]):
                alone = model(batch.inputs[row : row + 1, start:end])
                torch.testing.assert_close(packed_logits[row : row + 1, start:end], alone, atol=1e-5, rtol=0)
                loss_sum += F.cross_entropy(alone[0], batch.targets[row, start:end], reduction="sum")
                tokens += end - start
    assert tokens == batch.inputs.numel()
    assert packed_loss.item() == pytest.approx((loss_sum / tokens).item(), abs=1e-5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rotary_positions_continuing_give_each_document_its_own_attention(kernel):
    """Rotary attention depends on relative positions only, so a document at an offset attends as it would
    alone, even when positions continue across the sample."""
    needs_flex(kernel)
    model = masked_model("llama", kernel, "continue")
    batch = CausalLMCollator(end_of_document_id=END)(list(packed_sample()))
    with torch.no_grad():
        packed = model(batch.inputs, document_ids=batch.document_ids)
        for row in range(batch.inputs.shape[0]):
            for start, end in documents_of(packed_sample()[row]):
                alone = model(batch.inputs[row : row + 1, start:end])
                torch.testing.assert_close(packed[row : row + 1, start:end], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_learned_positions_continuing_keep_documents_apart(kernel):
    """With learned absolute positions a later document is not what it would be alone (its positions start
    past 0), but nothing of an earlier document reaches it; the first document is itself alone."""
    needs_flex(kernel)
    model = masked_model("gpt2", kernel, "continue")
    collate = CausalLMCollator(end_of_document_id=END)
    sample = packed_sample()
    changed = sample.clone()
    changed[:, :4] = (changed[:, :4] + 1) % END  # other tokens in each row's first document, same boundaries
    batch, changed_batch = collate(list(sample)), collate(list(changed))
    with torch.no_grad():
        packed = model(batch.inputs, document_ids=batch.document_ids)
        perturbed = model(changed_batch.inputs, document_ids=changed_batch.document_ids)
        unmasked = model(batch.inputs), model(changed_batch.inputs)
        first_end = documents_of(sample[0])[0][1]
        torch.testing.assert_close(packed[:1, :first_end], model(batch.inputs[:1, :first_end]), atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[0, 5:], perturbed[0, 5:], atol=1e-6, rtol=0)
    torch.testing.assert_close(packed[1, 7:], perturbed[1, 7:], atol=1e-6, rtol=0)
    assert not torch.allclose(unmasked[0][0, 5:], unmasked[1][0, 5:], atol=1e-4)


def test_the_document_mask_is_block_diagonal_and_causal():
    mask = document_causal_mask(torch.tensor([[0, 0, 1, 1, 1, 2]]))
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected[None, None])


@pytest.mark.slow
def test_flex_attention_attends_as_the_boolean_mask_does():
    needs_flex("flex")
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 24, 8, generator=generator)
    key, value = torch.randn(2, 2, 24, 8, generator=generator), torch.randn(2, 2, 24, 8, generator=generator)
    document_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 3 + [1] + [2] * 20])
    kernel = SDPAttention(config=FLEX)
    flex = kernel(query, key, value, document_block_mask(document_ids))
    sdpa = kernel(query, key, value, document_causal_mask(document_ids))
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=0)


def test_positions_restart_at_each_document():
    positions = positions_within_documents(torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 2, 2, 2, 2]]))
    assert positions.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 0, 1, 2, 3]]


def test_restarting_positions_without_masking_restarts_only_positions():
    """``document_positions: restart`` alone: the second document's first token sees the first document but sits
    at position 0, as a fresh document's first token does."""
    model = build(GPT2_STYLE, document_positions="restart").eval()
    inputs = torch.randint(0, END, (1, 8), generator=torch.Generator().manual_seed(0))
    document_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        restarted = model(inputs, document_ids=document_ids)
        continued = model(inputs)
    torch.testing.assert_close(restarted[:, :3], continued[:, :3], atol=0, rtol=0)
    assert not torch.allclose(restarted[:, 3:], continued[:, 3:])


@pytest.mark.parametrize("style", STYLES)
def test_masking_changes_nothing_without_document_ids(style):
    """Generation passes no documents (a prompt is one): the model computes what it does with masking off."""
    plain = build(STYLES[style]).eval()
    masked = build(STYLES[style], document_masking=True, document_positions="restart").eval()
    masked.load_state_dict(plain.state_dict())
    inputs = torch.randint(0, END, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(masked(inputs), plain(inputs))
        cache = masked.new_kv_cache()
        masked(inputs[:, :5], cache)
        torch.testing.assert_close(masked(inputs[:, 5:6], cache)[:, -1], plain(inputs[:, :6])[:, -1])


def test_auto_uses_the_boolean_mask_on_cpu_and_with_attention_dropout():
    document_ids = torch.zeros(1, 4, dtype=torch.int32)
    assert isinstance(SDPAttention().document_mask(document_ids), torch.Tensor)
    with_dropout = SDPAttention(0.1, SDPAttentionConfig(document_kernel="sdpa"))
    assert isinstance(with_dropout.document_mask(document_ids), torch.Tensor)


def test_flex_refuses_to_train_on_cpu_where_it_has_no_backward():
    with pytest.raises(ConfigError, match=r"document_kernel: flex cannot train on CPU, where torch's FlexAttention"):
        SDPAttention(config=FLEX).document_mask(torch.zeros(1, 4, dtype=torch.int32))


def test_flex_with_attention_dropout_is_refused():
    with pytest.raises(ConfigError, match=r"document_kernel: flex has no attention dropout.*dropout is 0\.1"):
        build(GPT2_STYLE, dropout=0.1, attention={"type_hint": "SDPAttention", "config": {"document_kernel": "flex"}})


class KernelWithoutDocuments(torch.nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()

    def forward(self, query, key, value):
        return F.scaled_dot_product_attention(query, key, value, is_causal=True)


def test_masking_with_a_kernel_that_cannot_mask_is_refused_and_without_it_the_kernel_works():
    registry = make_registry()
    registry.register_component("attention", "KernelWithoutDocuments", KernelWithoutDocuments, AttentionKernelConfig)

    def model(**overrides):
        config = {**TINY, **GPT2_STYLE, "attention": {"type_hint": "KernelWithoutDocuments"}, **overrides}
        return registry.build_component_by_config(
            registry.validate(Component("model"), {"type_hint": "DecoderLM", "config": config})
        )

    model()(torch.zeros(1, 4, dtype=torch.long), document_ids=torch.zeros(1, 4, dtype=torch.int32))
    with pytest.raises(ConfigError, match=r"document_masking: the attention kernel KernelWithoutDocuments cannot"):
        model(document_masking=True)


class DocumentReader(torch.nn.Module):
    """A model that says it reads documents but whose forward takes none."""

    uses_document_ids = True

    def forward(self, input_ids, kv_cache=None):
        return input_ids


def test_the_contract_refuses_a_model_reading_documents_without_taking_them():
    with pytest.raises(ConfigError, match=r"a forward\(\) taking document_ids \(it has uses_document_ids = True\)"):
        as_language_model(DocumentReader())


def test_decoder_lm_reads_documents_exactly_when_an_option_needs_them():
    assert not build(GPT2_STYLE).uses_document_ids
    assert build(GPT2_STYLE, document_masking=True).uses_document_ids
    assert build(LLAMA_STYLE, document_positions="restart").uses_document_ids


def test_corpus_evaluation_masks_documents_as_the_run_does():
    """``language_modeling_totals`` (``llm_gym evaluate``, in-loop evaluators) passes a batch's documents."""
    model = masked_model("llama", "sdpa", "restart")
    batch = CausalLMCollator(end_of_document_id=END)(list(packed_sample()))
    totals = language_modeling_totals(model, [batch], torch.ones(END + 1, dtype=torch.long), torch.device("cpu"))
    with torch.no_grad():
        logits = model(batch.inputs, document_ids=batch.document_ids)
    assert totals.loss == pytest.approx(F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten()).item())

"""Tests for textualdeg.guidance.injection: word injection into the text encoder (arXiv:2312.17334)."""

from __future__ import annotations

import pytest
import torch

from textualdeg.guidance.injection import (
    build_injection_prompt,
    encode_injected,
    encode_text,
    tokenize,
)


def _word_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_placeholder_index(sd):
    prompt = build_injection_prompt(sd.tokenizer, "a photo of a {}", "S")
    assert prompt.text == "a photo of a S" and prompt.placeholder_index == 5
    assert prompt.input_ids.shape == (77,) and prompt.input_ids[5].item() == 338
    assert build_injection_prompt(sd.tokenizer, "a photo of a S").placeholder_index == 5  # the README's form


def test_bad_templates_are_named(sd):
    with pytest.raises(ValueError, match="'a photo of a dog'"):
        build_injection_prompt(sd.tokenizer, "a photo of a dog")
    with pytest.raises(ValueError, match="'S and S'.*2 times"):
        build_injection_prompt(sd.tokenizer, "S and S")
    with pytest.raises(ValueError, match="placeholder='sks dog'"):
        build_injection_prompt(sd.tokenizer, "a photo of {}", "sks dog")


def test_plain_encoding_equals_the_text_encoder(sd):
    ids = tokenize(sd.tokenizer, ["a photo of a S", ""])
    with torch.no_grad():
        ours = encode_text(sd.text_encoder, ids)
        reference = sd.text_encoder(ids)
    torch.testing.assert_close(ours.last_hidden_state, reference.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(ours.pooler_output, reference.pooler_output, atol=0, rtol=0)


def test_single_word_equal_to_placeholder_embedding_is_unmodified(sd):
    prompt = build_injection_prompt(sd.tokenizer)
    ids = prompt.input_ids.expand(2, -1)
    own = sd.text_encoder.embeddings.token_embedding(ids[:, 5:6])  # (2, 1, D)
    with torch.no_grad():
        ours = encode_injected(sd.text_encoder, ids, prompt.placeholder_index, own)
        reference = sd.text_encoder(ids)
    torch.testing.assert_close(ours.last_hidden_state, reference.last_hidden_state, atol=0, rtol=0)
    torch.testing.assert_close(ours.pooler_output, reference.pooler_output, atol=0, rtol=0)


def test_twenty_words_equal_the_spelled_out_prompt(sd):
    """Injecting the embeddings of 20 real tokens = tokenizing the prompt with those words in place."""
    prompt = build_injection_prompt(sd.tokenizer, "a photo of a {} in the rain")
    words = "red car with round lights parked near an old stone wall under grey clouds at noon in the winter light"
    word_ids = _word_ids(sd.tokenizer, words)
    assert len(word_ids) == 20
    embeds = sd.text_encoder.embeddings.token_embedding(torch.tensor([word_ids]))  # (1, 20, D)
    with torch.no_grad():
        ours = encode_injected(sd.text_encoder, prompt.input_ids[None], prompt.placeholder_index, embeds)
        spelled = tokenize(sd.tokenizer, [f"a photo of a {words} in the rain"])
        reference = sd.text_encoder(spelled)
    torch.testing.assert_close(ours.last_hidden_state, reference.last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.pooler_output, reference.pooler_output, atol=1e-6, rtol=0)
    end = int(spelled[0].argmax())
    assert end == int(prompt.input_ids.argmax()) + 19  # the end token moved right by K - 1


def test_tail_is_cut_at_77(sd):
    template = "a photo of a {} " + "and more " * 30  # the spliced sequence exceeds 77 tokens
    prompt = build_injection_prompt(sd.tokenizer, template)
    word_ids = _word_ids(sd.tokenizer, "one two three four five six seven eight nine ten " * 2)
    embeds = sd.text_encoder.embeddings.token_embedding(torch.tensor([word_ids]))
    direct = torch.cat([prompt.input_ids[:5], torch.tensor(word_ids), prompt.input_ids[6:]])[:77]  # splice by id
    with torch.no_grad():
        ours = encode_injected(sd.text_encoder, prompt.input_ids[None], 5, embeds)
        reference = sd.text_encoder(direct[None]).last_hidden_state
    torch.testing.assert_close(ours.last_hidden_state, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.pooler_output, ours.last_hidden_state[:, 76])  # end token cut: clamped


def test_batch_with_different_indices_and_causality(sd):
    ids = tokenize(sd.tokenizer, ["a photo of a S", "S on a table"])
    index = torch.tensor([5, 1])
    words = torch.randn(2, 4, sd.text_encoder.config.hidden_size, requires_grad=True)
    out = encode_injected(sd.text_encoder, ids, index, words)
    for b in range(2):
        single = encode_injected(sd.text_encoder, ids[b : b + 1], int(index[b]), words[b : b + 1])
        torch.testing.assert_close(out.last_hidden_state[b : b + 1], single.last_hidden_state, atol=1e-6, rtol=0)
    out.last_hidden_state.sum().backward()
    assert words.grad is not None and words.grad.abs().sum() > 0
    perturbed = words.detach().clone()
    perturbed[0, -1] += torch.randn(perturbed.shape[-1])  # last word at position 8: earlier positions can't see it
    with torch.no_grad():
        again = encode_injected(sd.text_encoder, ids, index, perturbed)
    torch.testing.assert_close(again.last_hidden_state[0, :8], out.last_hidden_state[0, :8].detach())
    assert (again.last_hidden_state[0, 8:] - out.last_hidden_state[0, 8:]).abs().max() > 1e-4


def test_shape_errors(sd):
    ids = tokenize(sd.tokenizer, ["a photo of a S"])
    with pytest.raises(ValueError, match="word_embeddings"):
        encode_injected(sd.text_encoder, ids, 5, torch.zeros(1, 3, 7))
    with pytest.raises(ValueError, match="placeholder_index"):
        encode_injected(sd.text_encoder, ids, 0, torch.zeros(1, 3, sd.text_encoder.config.hidden_size))

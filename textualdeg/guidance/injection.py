"""Injecting pseudo-word embeddings into a prompt, through the text encoder's own modules.

The prompt "a photo of a S" is tokenized; the placeholder token "S" is replaced by the K
word embeddings from the mappers, the rest of the prompt shifts right by K - 1 and the
sequence is cut at the tokenizer length (77). The spliced embeddings then go through the
text encoder's ``embeddings`` (adding position embeddings), ``encoder`` (with the causal
mask) and ``final_layer_norm``: the same computation as ``text_encoder(input_ids)`` with
no class patched (the authors replaced ``CLIPTextTransformer.__call__``, D5). The pooled
output is taken at the *shifted* end token (the authors took it at the unshifted one,
D52; SD does not use it). IDs as in docs/official_differences.md; the transformers 5
details are in docs/ecosystem_notes.md.

Paper: "Improving Image Restoration through Removing Degradations in Textual
Representations" (Lin et al., CVPR 2024), arXiv:2312.17334.

Example::

    prompt = build_injection_prompt(sd.tokenizer, "a photo of a {}", "S")   # placeholder at 5
    ids = prompt.input_ids.expand(batch, -1)                               # (B, 77)
    context = encode_injected(sd.text_encoder, ids, prompt.placeholder_index, words)
    context.last_hidden_state                                              # (B, 77, 1024)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.masking_utils import create_causal_mask


class TextEncoding(NamedTuple):
    """Text-encoder outputs.

    Attributes:
        last_hidden_state: (B, L, D) after ``final_layer_norm``: the UNet context.
        pooler_output: (B, D) hidden state at the end token (shifted when words are injected).
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor


@dataclass(frozen=True)
class InjectionPrompt:
    """A tokenized prompt with the position of its placeholder.

    Attributes:
        text: the prompt text, e.g. "a photo of a S".
        input_ids: (L,) token ids padded to the tokenizer length (77).
        placeholder_index: position of the placeholder token in ``input_ids`` (5 for
            "a photo of a S": BOS, a, photo, of, a, S).
    """

    text: str
    input_ids: torch.Tensor
    placeholder_index: int


def tokenize(tokenizer: CLIPTokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Tokenize, padded and truncated to ``tokenizer.model_max_length`` (77).

    Args:
        tokenizer: the Stable Diffusion tokenizer.
        texts: B prompts.

    Returns:
        (B, 77) long tensor.
    """
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def build_injection_prompt(
    tokenizer: CLIPTokenizer,
    template: str = "a photo of a {}",
    placeholder: str = "S",
) -> InjectionPrompt:
    """Tokenize a prompt template and locate its placeholder.

    Args:
        tokenizer: the Stable Diffusion tokenizer.
        template: a template with ``{}`` (formatted with ``placeholder``) or a prompt that
            already contains the placeholder word ("a photo of a S", as the README passes).
        placeholder: the placeholder word; it must be a single token.

    Returns:
        The tokenized prompt and the placeholder position.

    Raises:
        ValueError: naming the template, when the placeholder is absent, occurs more than
            once, or is cut off by truncation; or naming the placeholder when it is not a
            single token.
    """
    text = template.format(placeholder) if "{}" in template else template
    placeholder_ids = tokenizer(placeholder, add_special_tokens=False).input_ids
    if len(placeholder_ids) != 1:
        raise ValueError(f"placeholder={placeholder!r} must be a single token; it tokenizes to {placeholder_ids}")
    input_ids = tokenize(tokenizer, [text])[0]
    positions = (input_ids == placeholder_ids[0]).nonzero().flatten().tolist()
    if len(positions) != 1:
        where = "does not contain" if not positions else f"contains {len(positions)} times"
        raise ValueError(
            f"template={template!r} {where} the placeholder {placeholder!r} (token {placeholder_ids[0]}) "
            "within the tokenizer length; it must contain it exactly once"
        )
    return InjectionPrompt(text=text, input_ids=input_ids, placeholder_index=positions[0])


def _end_positions(text_encoder: CLIPTextModel, input_ids: torch.Tensor) -> torch.Tensor:
    """End-token positions as transformers' CLIPTextModel pools them: (B,) long."""
    eos_id = text_encoder.config.eos_token_id
    if eos_id == 2:  # legacy SD 2 config: the end token is the largest id in the sequence
        return input_ids.to(torch.int).argmax(dim=-1)
    return (input_ids == eos_id).to(torch.int).argmax(dim=-1)


def _encode_embeddings(text_encoder: CLIPTextModel, token_embeds: torch.Tensor) -> torch.Tensor:
    """Position embeddings + causal encoder + final layer norm: (B, L, D) -> (B, L, D)."""
    hidden = text_encoder.embeddings(inputs_embeds=token_embeds)  # adds position embeddings 0..L-1
    mask = create_causal_mask(
        config=text_encoder.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None
    )
    hidden = text_encoder.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
    return text_encoder.final_layer_norm(hidden)


def encode_text(text_encoder: CLIPTextModel, input_ids: torch.Tensor) -> TextEncoding:
    """Encode token ids with no injection (e.g. the empty unconditional prompt).

    Args:
        text_encoder: the Stable Diffusion text encoder.
        input_ids: (B, L) token ids.

    Returns:
        ``TextEncoding`` with (B, L, D) and (B, D).
    """
    input_ids = input_ids.to(text_encoder.device)
    hidden = _encode_embeddings(text_encoder, text_encoder.embeddings.token_embedding(input_ids))
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    return TextEncoding(hidden, hidden[batch, _end_positions(text_encoder, input_ids)])


def splice_words(
    token_embeds: torch.Tensor,
    placeholder_index: torch.Tensor,
    word_embeddings: torch.Tensor,
) -> torch.Tensor:
    """Replace the placeholder by K words, shift the tail right by K - 1, cut at L.

    Args:
        token_embeds: (B, L, D) token embeddings of the prompt.
        placeholder_index: (B,) placeholder positions.
        word_embeddings: (B, K, D) words to insert.

    Returns:
        (B, L, D) spliced embeddings.
    """
    length = token_embeds.shape[1]
    rows = [
        torch.cat([token_embeds[b, :i], word_embeddings[b], token_embeds[b, i + 1 :]])[:length]  # (L, D)
        for b, i in enumerate(placeholder_index.tolist())
    ]
    return torch.stack(rows)  # (B, L, D)


def encode_injected(
    text_encoder: CLIPTextModel,
    input_ids: torch.Tensor,
    placeholder_index: int | torch.Tensor,
    word_embeddings: torch.Tensor,
) -> TextEncoding:
    """Encode a prompt whose placeholder is replaced by ``word_embeddings``.

    Gradients flow to ``word_embeddings``. With K = 1 and the placeholder's own token
    embedding this equals ``text_encoder(input_ids)``.

    Args:
        text_encoder: the Stable Diffusion text encoder (width D).
        input_ids: (B, L) token ids (e.g. ``prompt.input_ids.expand(B, -1)``).
        placeholder_index: placeholder position, one int for the batch or (B,).
        word_embeddings: (B, K, D) words from the mappers.

    Returns:
        ``TextEncoding``: (B, L, D) context and (B, D) pooled output at the end token,
        whose position moves by K - 1 (clamped to L - 1 when truncation cut it off).

    Raises:
        ValueError: on a width or batch mismatch, or a placeholder index out of range.
    """
    batch, length = input_ids.shape
    width = text_encoder.config.hidden_size
    if word_embeddings.ndim != 3 or word_embeddings.shape[0] != batch or word_embeddings.shape[2] != width:
        raise ValueError(f"word_embeddings must be ({batch}, K, {width}); got {tuple(word_embeddings.shape)}")
    device = text_encoder.device
    input_ids = input_ids.to(device)
    index = torch.as_tensor(placeholder_index, device=device).expand(batch)  # (B,)
    if (index <= 0).any() or (index >= length - 1).any():
        raise ValueError(f"placeholder_index must lie in [1, {length - 2}]; got {index.tolist()}")
    token_embeds = text_encoder.embeddings.token_embedding(input_ids)  # (B, L, D)
    spliced = splice_words(token_embeds, index, word_embeddings.to(device=device, dtype=token_embeds.dtype))
    hidden = _encode_embeddings(text_encoder, spliced)
    shift = word_embeddings.shape[1] - 1
    end = (_end_positions(text_encoder, input_ids) + shift).clamp(max=length - 1)  # (B,)
    return TextEncoding(hidden, hidden[torch.arange(batch, device=device), end])

"""DAClipEmbedder: preprocessing as the official clip_transform, (B, 2, D) embeddings, classifier."""

from __future__ import annotations

import pytest
import torch

from textualdeg.daclip.embedder import DAClipEmbedder, _resize_shorter_center_crop
from textualdeg.daclip.model import DEGRADATIONS


@pytest.fixture(scope="module")
def embedder(tiny_daclip) -> DAClipEmbedder:
    return DAClipEmbedder.from_pretrained(tiny_daclip)


def test_embed_shape_dtype_and_determinism(embedder):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 60, 90)
    first = embedder.embed(images)
    assert first.shape == (3, 2, embedder.embed_dim) and first.dtype == torch.float32
    assert torch.equal(first, embedder.embed(images))
    assert not torch.allclose(first[:, 0], first[:, 1])  # content != degradation (tiny has live zero modules)


def test_embedding_does_not_depend_on_the_batch(embedder):
    torch.manual_seed(1)
    images = torch.rand(4, 3, 48, 48)
    batch = embedder.embed(images)
    alone = embedder.embed(images[2:3])
    torch.testing.assert_close(alone[0], batch[2], rtol=0, atol=1e-5)


def test_embed_matches_the_model_on_preprocessed_images(embedder):
    images = torch.rand(2, 3, 224, 224)
    content, degradation = embedder.model.encode_image(embedder.preprocess(images), control=True)
    out = embedder.embed(images)
    torch.testing.assert_close(out[:, 0], content)
    torch.testing.assert_close(out[:, 1], degradation)


def test_preprocess_resizes_the_shorter_side_and_center_crops(embedder):
    images = torch.rand(2, 3, 100, 300)
    x = embedder.preprocess(images)
    assert x.shape == (2, 3, 224, 224)
    # A 448 x 672 image of a constant colour: normalised value of that colour everywhere.
    flat = torch.full((1, 3, 448, 672), 0.5)
    mean = torch.tensor(embedder.model.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(embedder.model.image_std).view(1, 3, 1, 1)
    expected = (torch.floor(flat[..., :224, :224] * 255) / 255 - mean) / std
    torch.testing.assert_close(embedder.preprocess(flat), expected)


def test_center_crop_position():
    # Width 300 -> 672 after resizing the 100 side to 224: crop starts at round((672-224)/2) = 224.
    image = torch.arange(300, dtype=torch.float32).view(1, 1, 1, 300).expand(1, 3, 100, 300)
    out = _resize_shorter_center_crop(image, 224)
    assert out.shape == (1, 3, 224, 224)
    assert 99 < out[0, 0, 0, 0].item() < 101  # column 224 of 672 ~ source column 100


def test_classify_is_a_distribution_over_the_names(embedder):
    probs = embedder.classify(torch.rand(2, 3, 64, 64))
    assert probs.shape == (2, len(DEGRADATIONS))
    torch.testing.assert_close(probs.sum(dim=-1), torch.ones(2))
    two = embedder.classify(torch.rand(1, 3, 64, 64), degradations=["hazy", "noisy"])
    assert two.shape == (1, 2)
    assert embedder.degradations == DEGRADATIONS


def test_frozen_eval_on_device(embedder):
    assert not embedder.model.training
    assert not any(p.requires_grad for p in embedder.model.parameters())
    assert embedder.device == torch.device("cpu")


@pytest.mark.parametrize("path", [None, ""])
def test_from_pretrained_without_a_path_names_the_option(path):
    with pytest.raises(ValueError, match="path.daclip"):
        DAClipEmbedder.from_pretrained(path)


def test_preprocess_rejects_other_shapes(embedder):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        embedder.preprocess(torch.rand(3, 32, 32))

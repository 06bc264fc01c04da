"""The demo's tiny prior: it installs as a Stable Diffusion folder and knows the demo scenes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from textualdeg.demo.prior import PRIOR_FILE, InstalledPrior, install_prior, pack_prior, prior_fidelity, PriorConfig
from textualdeg.demo.scenes import demo_scenes
from textualdeg.guidance.models import check_stable_diffusion_folder, load_stable_diffusion


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> InstalledPrior:
    return install_prior(tmp_path_factory.mktemp("prior") / "models")


def test_shipped_file_is_small_and_reproducible_from_its_record():
    from safetensors import safe_open

    assert PRIOR_FILE.stat().st_size < 5 * 2**20
    with safe_open(str(PRIOR_FILE), framework="pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["config"]) == {**PriorConfig().__dict__}  # made with the defaults of the script
    assert json.loads(metadata["scenes"]) == list(demo_scenes())


def test_prior_loads_through_the_stable_diffusion_loaders(prior):
    assert set(check_stable_diffusion_folder(prior.paths["stable_diffusion"])) >= {"unet", "vae", "text_encoder"}
    sd = load_stable_diffusion(prior.paths["stable_diffusion"])
    assert sd.vae.config.scaling_factor != pytest.approx(0.18215)  # the trained VAE's own scaling
    assert prior.words.shape == (len(prior.scenes), 20, sd.text_encoder.config.hidden_size)


def test_scene_words_generate_the_scene_and_random_words_do_not(prior):
    scenes = demo_scenes()
    picked = {name: scenes[name] for name in ("astronaut-tl", "coffee-tr", "rocket-bl", "chelsea-br")}
    fidelity = prior_fidelity(prior, picked)
    assert fidelity["vae"].min() > 20.0
    # every scene: its own words generate it clearly better than random words do
    assert (fidelity["scene_words"] > fidelity["random_words"] + 3.0).all(), fidelity


def test_install_refuses_a_file_that_is_not_a_prior(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not a tiny-prior file"):
        install_prior(tmp_path / "models", bad)
    with pytest.raises(FileNotFoundError, match="python -m textualdeg.demo.prior"):
        install_prior(tmp_path / "models", tmp_path / "missing.safetensors")


def test_pack_then_install_round_trips_the_weights(prior, tmp_path):
    sd = load_stable_diffusion(prior.paths["stable_diffusion"])
    names = prior.scenes
    file = pack_prior(prior.paths["stable_diffusion"].parent, names, prior.words, tmp_path / "p.safetensors", PriorConfig())
    again = install_prior(tmp_path / "models", file)
    sd2 = load_stable_diffusion(again.paths["stable_diffusion"])
    for a, b in ((sd.unet, sd2.unet), (sd.vae, sd2.vae), (sd.text_encoder, sd2.text_encoder)):
        for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), key
    assert torch.equal(again.words, prior.words) and np.isclose(sd2.vae.config.scaling_factor, sd.vae.config.scaling_factor)

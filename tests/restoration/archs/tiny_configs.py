"""Tiny constructor kwargs for every registered arch, used by the registry smoke test.

Add one entry per name you register in ``ARCH_REGISTRY`` (the smoke test fails for a
registered name without one). Guided archs (whose ``forward`` takes ``ref``) are detected
from the signature and called as ``model(x, ref)``.
"""

from __future__ import annotations

NAFNET_TINY = dict(img_channel=3, width=4, middle_blk_num=1, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1))
RESTORMER_TINY = dict(
    dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2), ffn_expansion_factor=2.0
)
PROMPTIR_TINY = dict(
    RESTORMER_TINY, prompt_dims=(8, 8, 16), prompt_sizes=(8, 4, 2), prompt_len=3
)

TINY_CONFIGS: dict[str, dict] = {
    "NAFNet": NAFNET_TINY,
    "NAFNetLocal": dict(NAFNET_TINY, train_size=(1, 3, 16, 16)),
    "Restormer": RESTORMER_TINY,
    "PromptIR": PROMPTIR_TINY,
}

# Guided archs: the backbone's tiny config plus a small reference branch.
# lr_block_size=4 keeps pad_multiple small (2**levels * 4); dilations must fit a 4-block.
_REFERENCE_TINY = dict(ext_n_blocks=(1,), lr_block_size=4, dilations=(1, 2))
GUIDED_NAFNET_TINY = dict(NAFNET_TINY, **_REFERENCE_TINY, reffusion_n_blocks=(1, 1), reffusion_n_blocks_middle=1)
GUIDED_RESTORMER_TINY = dict(RESTORMER_TINY, **_REFERENCE_TINY, reffusion_n_blocks=(1, 1, 1, 1))
GUIDED_PROMPTIR_TINY = dict(PROMPTIR_TINY, **_REFERENCE_TINY, reffusion_n_blocks=(1, 1, 1, 1))
TINY_CONFIGS.update(
    {
        "GuidedNAFNet": GUIDED_NAFNET_TINY,
        "NAFNetRefFusion": GUIDED_NAFNET_TINY,
        "GuidedRestormer": GUIDED_RESTORMER_TINY,
        "GuidedPromptIR": GUIDED_PROMPTIR_TINY,
    }
)

# SFNet, DRSformer and DSRIR (plain and guided).
SFNET_TINY = dict(mode=("train", "Indoor"), num_res=1, base_channel=16)  # base_channel: a multiple of 16
DRSFORMER_TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), heads=(1, 2, 2, 4), ffn_expansion_factor=2.0)
DSRIR_TINY = dict(sn1_feats=4, sn2_feats=6, sn3_feats=6, feats_step1=2, feats_step2=2, reduction=2,
                  sn1_pab=(1, 1, 1), sn2_pab=(1, 1), sn3_pab=1, sn3_pa=((8, 8),))
GUIDED_SFNET_TINY = dict(SFNET_TINY, **_REFERENCE_TINY, reffusion_n_blocks=(1, 1, 1))
GUIDED_DRSFORMER_TINY = dict(DRSFORMER_TINY, **_REFERENCE_TINY, reffusion_n_blocks=(1, 1, 1, 1))
GUIDED_DSRIR_TINY = dict(DSRIR_TINY, **_REFERENCE_TINY, reffusion_n_blocks=(1, 1, 1))
TINY_CONFIGS.update(
    {
        "SFNet": SFNET_TINY,
        "GuidedSFNet": GUIDED_SFNET_TINY,
        "SFNetRefFusion": GUIDED_SFNET_TINY,
        "DRSformer": DRSFORMER_TINY,
        "DRSformer200L_SPA": DRSFORMER_TINY,
        "GuidedDRSformer": GUIDED_DRSFORMER_TINY,
        "GuidedDRSformer200LSPA": GUIDED_DRSFORMER_TINY,
        "DRSformerRefFusion": GUIDED_DRSFORMER_TINY,
        "DRSformer200L_SPA_RefFusion": GUIDED_DRSFORMER_TINY,
        "DSRIR": DSRIR_TINY,
        "GuidedDSRIR": GUIDED_DSRIR_TINY,
    }
)

# TextPromptIR (instruction-prompted): no dead official tensors, a 16-wide text embedding.
TEXTPROMPTIR_TINY = dict(RESTORMER_TINY, text_dim=16, text_hidden_dim=12, embed_dim=8, keep_dead_weights=False)
TINY_CONFIGS["TextPromptIR"] = TEXTPROMPTIR_TINY

# GuidedTextPromptIR (guidance image and instruction): the tiny TextPromptIR plus the reference branch.
GUIDED_TEXTPROMPTIR_TINY = dict(TEXTPROMPTIR_TINY, **_REFERENCE_TINY, reffusion_n_blocks=(1, 1, 1, 1))
TINY_CONFIGS["GuidedTextPromptIR"] = GUIDED_TEXTPROMPTIR_TINY

# DA-CLIP-conditioned archs (``model(..., daclip=e)``, e of shape (B, 2, daclip_dim)): the tiny
# backbone plus a 16-wide embedding, 3 context tokens and 2 heads.
_DACLIP_TINY = dict(daclip_dim=16, daclip_tokens=3, daclip_heads=2)
TINY_CONFIGS.update(
    {
        "DAClipNAFNet": dict(NAFNET_TINY, **_DACLIP_TINY),
        "DAClipRestormer": dict(RESTORMER_TINY, **_DACLIP_TINY),
        "DAClipPromptIR": dict(PROMPTIR_TINY, **_DACLIP_TINY),
        "DAClipTextPromptIR": dict(TEXTPROMPTIR_TINY, **_DACLIP_TINY),
        "DAClipGuidedNAFNet": dict(GUIDED_NAFNET_TINY, **_DACLIP_TINY),
        "DAClipGuidedRestormer": dict(GUIDED_RESTORMER_TINY, **_DACLIP_TINY),
        "DAClipGuidedPromptIR": dict(GUIDED_PROMPTIR_TINY, **_DACLIP_TINY),
        "DAClipGuidedTextPromptIR": dict(GUIDED_TEXTPROMPTIR_TINY, **_DACLIP_TINY),
    }
)

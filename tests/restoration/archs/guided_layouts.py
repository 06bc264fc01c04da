"""The authors' ``masa_*`` state_dict layout of the 4-level guided transformer models
(``RestormerRefFusion`` / ``PromptIRRefFusion`` in mrluin/TextualDegRemoval@e755c39,
as their constructors build it), for the guided Restormer/PromptIR key tests."""

from __future__ import annotations


def authors_masa_layout(
    dim: int = 48,
    in_channels: int = 3,
    heads: tuple[int, ...] = (1, 2, 4, 8),
    ffn_expansion_factor: float = 2.66,
    ext_n_blocks: tuple[int, ...] = (4, 4, 4, 4),
    reffusion_n_blocks: tuple[int, ...] = (2, 2, 2, 2),
) -> dict[str, tuple[int, ...]]:
    """{key: shape} of ``masa_enc`` (4 levels, width ``dim``) and ``masa_blk_enc_level1..4``
    (TransformerResFusionBlock stacks of width 2 * dim * 2**l, bias=False, WithBias norm)."""
    keys: dict[str, tuple[int, ...]] = {}
    c_in = in_channels
    for level in range(4):
        c = dim * 2**level
        keys[f"masa_enc.conv_L{level + 1}.weight"] = (c, c_in, 3, 3)
        keys[f"masa_enc.conv_L{level + 1}.bias"] = (c,)
        # the authors' Encoder uses n_blks[2] for its levels 4 (and 5)
        for i in range(ext_n_blocks[min(level, 2)]):
            for conv in ("conv1", "conv2"):
                keys[f"masa_enc.blk_L{level + 1}.{i}.{conv}.weight"] = (c, c, 3, 3)
                keys[f"masa_enc.blk_L{level + 1}.{i}.{conv}.bias"] = (c,)
        c_in = c
    for level in range(4):
        w = 2 * dim * 2**level
        hidden = int(w * ffn_expansion_factor)
        for i in range(reffusion_n_blocks[level]):
            p = f"masa_blk_enc_level{level + 1}.{i}."
            keys.update(
                {
                    p + "alpha": (1,),
                    p + "norm1.body.weight": (w,),
                    p + "norm1.body.bias": (w,),
                    p + "attn.temperature": (heads[level], 1, 1),
                    p + "attn.qkv.weight": (3 * w, w, 1, 1),
                    p + "attn.qkv_dwconv.weight": (3 * w, 1, 3, 3),
                    p + "attn.project_out.weight": (w, w, 1, 1),
                    p + "norm2.body.weight": (w,),
                    p + "norm2.body.bias": (w,),
                    p + "ffn.project_in.weight": (2 * hidden, w, 1, 1),
                    p + "ffn.dwconv.weight": (2 * hidden, 1, 3, 3),
                    p + "ffn.project_out.weight": (w, hidden, 1, 1),
                }
            )
    return keys

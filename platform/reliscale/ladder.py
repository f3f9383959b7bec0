"""Size ladders for the three model families, and what a size costs.

Ladder rungs are about half a decade apart in non-embedding parameters
(0.1M, 0.3M, 1M, ... 1B), with Pythia/OLMo-style depth-to-width growth for the
decoder and the ViT-Ti/S/B/L/g shapes at the top of the ViT ladder.

Parameter counts are exact: the trial's model is instantiated on the meta
device (no memory is allocated) and its parameters are summed.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILIES = ("decoder", "vit", "encdec")


@dataclass(frozen=True)
class Shape:
    """Width, depth and attention heads of one transformer stack."""

    width: int
    depth: int
    heads: int
    ffn: int | None = None  # feed-forward width; None = the family's default rule

    def ffn_width(self, ratio: float) -> int:
        """The feed-forward width: explicit, or `ratio`·width rounded up to a multiple of 32."""
        if self.ffn is not None:
            return self.ffn
        return -(-int(ratio * self.width) // 32) * 32

    @property
    def label(self) -> str:
        return f"w{self.width}d{self.depth}h{self.heads}"


# Non-embedding params per decoder layer ≈ 12·width² (4w² attention + 3·w·(8/3)w SwiGLU).
DECODER_LADDER: dict[str, Shape] = {
    "S0": Shape(64, 2, 2),  # ~0.1M
    "S1": Shape(96, 3, 3),  # ~0.3M
    "S2": Shape(128, 6, 4),  # ~1.2M
    "S3": Shape(192, 8, 6),  # ~3.5M
    "S4": Shape(256, 12, 8),  # ~9.5M
    "S5": Shape(384, 16, 6),  # ~28M
    "S6": Shape(640, 20, 10),  # ~98M
    "S7": Shape(1024, 24, 16),  # ~300M  (Pythia-410M shape)
    "S8": Shape(2048, 16, 16),  # ~0.8B non-embedding, ~1.0B with a 50K vocabulary (Pythia-1B shape)
}

# ViT MLP is 4·width (GELU), ≈ 12·width² per layer; S5..S8 are ViT-S, B, L and g.
VIT_LADDER: dict[str, Shape] = {
    "S0": Shape(64, 2, 2),
    "S1": Shape(96, 3, 3),
    "S2": Shape(128, 6, 4),
    "S3": Shape(192, 8, 3),
    "S4": Shape(256, 12, 4),
    "S5": Shape(384, 12, 6),  # ViT-S
    "S6": Shape(768, 12, 12),  # ViT-B
    "S7": Shape(1024, 24, 16),  # ViT-L
    "S8": Shape(1408, 40, 16),  # ViT-g (~1.0B)
}

# T5 v1.1-style (gated-GELU) stacks; an encdec size names an encoder and a decoder rung.
ENCDEC_LADDER: dict[str, Shape] = {
    "S0": Shape(64, 2, 2),
    "S1": Shape(96, 3, 3),
    "S2": Shape(128, 4, 4),
    "S3": Shape(192, 6, 6),
    "S4": Shape(256, 8, 8),
    "S5": Shape(384, 12, 6),
    "S6": Shape(640, 12, 10),
    "S7": Shape(1024, 16, 16),
    "S8": Shape(1536, 16, 16),  # ~1B encoder+decoder at S8/S8 (decoder layers ≈ 16·width²)
}

LADDERS: dict[str, dict[str, Shape]] = {
    "decoder": DECODER_LADDER,
    "vit": VIT_LADDER,
    "encdec": ENCDEC_LADDER,
}

# Feed-forward width over model width, per family.
FFN_RATIO = {"decoder": 8 / 3, "vit": 4.0, "encdec": 8 / 3}


@dataclass(frozen=True)
class ModelSize:
    """One point on the size axis: a named rung or an explicit shape.

    `enc`/`dec` hold the two stacks of a two-axis model (vit: vision encoder and
    text decoder; encdec: encoder and decoder). A one-axis model has only `enc`.
    """

    name: str
    enc: Shape
    dec: Shape | None = None

    @property
    def two_axis(self) -> bool:
        return self.dec is not None


def shape_of(family: str, ref: str | Shape) -> Shape:
    if isinstance(ref, Shape):
        return ref
    return LADDERS[family][ref]


def resolve_size(family: str, enc: str | Shape, dec: str | Shape | None = None) -> ModelSize:
    """Turn ladder names / explicit shapes into a ModelSize with a readable name."""

    def name(ref: str | Shape) -> str:
        return ref if isinstance(ref, str) else ref.label

    if family == "encdec" and dec is None:
        dec = enc  # encdec always has a decoder; one name means the same rung for both
    label = name(enc) if dec is None else f"{name(enc)}x{name(dec)}"
    return ModelSize(label, shape_of(family, enc), None if dec is None else shape_of(family, dec))


# ---------------------------------------------------------------- compute and memory


def attention_flops_per_token(size: ModelSize, enc_len: int, dec_len: int = 0) -> int:
    """Forward+backward attention-score FLOPs per token: 6·n_layer·n_ctx·d (Kaplan et al. 2020)."""
    total = 6 * size.enc.depth * enc_len * size.enc.width
    if size.dec is not None:
        total += 6 * size.dec.depth * max(dec_len, 1) * size.dec.width
    return total


def training_flops(n_params_nonembedding: int, tokens: int, attn_flops_per_token: int) -> float:
    """C = 6·N·T + 6·n_layer·n_ctx·d·T, with N the non-embedding parameters and T tokens seen."""
    return float(6 * n_params_nonembedding * tokens + attn_flops_per_token * tokens)


def model_state_bytes(n_params: int, zero_stage: int, workers: int, precision: str) -> float:
    """Bytes per worker for weights, gradients and Adam states under ZeRO (Rajbhandari et al. 2020).

    fp32: 4 B weights + 4 B grads + 8 B Adam (m, v). 16-bit mixed precision: 2 B weights
    + 2 B grads + 12 B fp32 master/m/v. Stage 1 partitions optimizer states over the
    workers, stage 2 also gradients, stage 3 also weights.
    """
    if precision == "fp32":
        w, g, opt = 4, 4, 8
    else:
        w, g, opt = 2, 2, 12
    k = workers
    per_param = {
        0: w + g + opt,
        1: w + g + opt / k,
        2: w + (g + opt) / k,
        3: (w + g + opt) / k,
    }[zero_stage]
    return per_param * n_params


def activation_bytes(size: ModelSize, micro_batch: int, seq_len: int, precision: str,
                     vocab: int = 0, checkpointing: bool = False) -> float:
    """Stored activations per worker (Korthikanti et al. 2022).

    One layer stores s·b·h·(34 + 5·a·s/h) bytes in 16-bit training (doubled for fp32).
    Without recomputation every layer keeps them; with activation checkpointing the
    layers keep only their 16-bit inputs (2·s·b·h) and one layer is live at a time.
    The fp32 logits add b·s·V·4 for a vocabulary output.
    """
    scale = 2 if precision == "fp32" else 1
    total = 0.0
    for shape in (size.enc, size.dec):
        if shape is None:
            continue
        s, b, h, n_layer, a = seq_len, micro_batch, shape.width, shape.depth, shape.heads
        layer = s * b * h * (34 + 5 * a * s / h) * scale
        total += (2 * s * b * h * scale * n_layer + layer) if checkpointing else layer * n_layer
    return total + micro_batch * seq_len * vocab * 4

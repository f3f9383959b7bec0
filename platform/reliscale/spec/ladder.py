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


PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}

# Which transformers block each family's stacks are built from (see models.py).
STACK_KINDS = {"decoder": ("llama", None), "vit": ("vit", "llama"), "encdec": ("t5", "t5")}


def layer_activation_bytes(kind: str, h: int, ffn: int, heads: int, batch: int, seq: int,
                           precision: str) -> float:
    """Bytes one eager transformers block keeps for backward: what autograd saves, by tensor.

    Counted from the tensors the block's ops save (the same numbers a
    `saved_tensors_hooks` count gives), with p the bytes of the model's dtype and
    n = batch·seq tokens:
    - llama (LlamaDecoderLayer, SDPA flash attention, SwiGLU): each RMSNorm keeps its input
      upcast to fp32 (4h), the normalised and the weighted output (2·p·h) and a fp32 rsqrt
      (4); attention keeps q, k, v and its output (4·p·h) and a fp32 logsumexp per head
      (4·heads); the MLP keeps gate, silu(gate), up and their product (4·p·ffn).
    - vit (ViTLayer, SDPA, GELU MLP): each LayerNorm keeps input and output (2·p·h) and
      mean/rstd (≤ 8); attention as above; the MLP keeps fc1's output and GELU's (2·p·ffn).
    - t5 (T5Block encoder layer, eager attention with relative bias, gated tanh-GELU): each
      T5LayerNorm keeps a fp32 copy (4h), in 16-bit also its 16-bit input (p·h), the
      normalised and the output (2·p·h) and a fp32 rsqrt; attention runs in fp32: q, k, v
      (12h), the softmax probabilities (4·heads·seq per token) and the output (p·h); the FF
      keeps 7 tensors of width ffn (tanh-GELU's x, tanh, x/2, 1+tanh; its output, the linear
      branch, the product).
    Nothing here is quadratic in seq except t5's probabilities: flash attention stores none.
    """
    p, n = PRECISION_BYTES[precision], batch * seq
    if kind == "llama":
        return n * ((8 + 8 * p) * h + 4 * p * ffn + 8 + 4 * heads)
    if kind == "vit":
        return n * (8 * p * h + 2 * p * ffn + 16 + 4 * heads)
    if kind == "t5":
        extra_input = 0 if p == 4 else p  # in fp32 the fp32 copy is the input itself
        return n * ((20 + 2 * extra_input + 5 * p) * h + 7 * p * ffn + 8 + 4 * heads * seq)
    raise ValueError(f"unknown block kind {kind!r}; allowed: llama, vit, t5")


def activation_bytes(size: ModelSize, micro_batch: int, seq_len: int, precision: str,
                     vocab: int = 0, checkpointing: bool = False, family: str = "decoder",
                     dec_len: int = 0) -> float:
    """Stored activations per worker: every layer's `layer_activation_bytes`.

    `seq_len` is the length the first stack sees, `dec_len` the second stack's (vit's text
    decoder, encdec's decoder). With activation checkpointing every layer keeps only its
    input (p·h per token) and one layer's activations are live again during its backward.
    A vocabulary output adds its fp32 logits (b·s·V·4, kept by the cross-entropy).
    The t5 decoder's cross-attention is counted as a self-attention layer at the decoder
    length: our encdec decoders read one token, so its k/v of the encoder are small.
    """
    p = PRECISION_BYTES[precision]
    first, second = STACK_KINDS[family]
    stacks = [(first, size.enc, seq_len)]
    if size.dec is not None or family == "encdec":
        dec = size.dec or size.enc
        if family == "encdec":  # T5Config takes width, heads and d_ff from the encoder shape
            dec = Shape(size.enc.width, dec.depth, size.enc.heads, size.enc.ffn_width(FFN_RATIO["encdec"]))
        stacks.append((second, dec, max(dec_len, 1)))
    total = 0.0
    for kind, shape, seq in stacks:
        ratio = FFN_RATIO["decoder" if kind == "llama" else family]
        layer = layer_activation_bytes(kind, shape.width, shape.ffn_width(ratio), shape.heads, micro_batch,
                                       seq, precision)
        if checkpointing:
            total += p * micro_batch * seq * shape.width * shape.depth + layer
        else:
            total += layer * shape.depth
    return total + micro_batch * seq_len * vocab * 4


# Measured on this platform's CPU workers (bench/memory.md): resident memory a worker gains on
# first use whatever the model size (lazily initialised autograd/oneDNN state and transformers
# modules: ~20 MiB), plus ~44 MiB when DeepSpeed builds a ZeRO optimizer (stage >= 1).
RUNTIME_BYTES = 20 * 2**20
ZERO_OPTIMIZER_BYTES = 44 * 2**20
# glibc raises its mmap threshold after the first large free, so later activation-sized blocks
# come from the heap and stay resident after backward frees them: measured 0.63x (S4) to 0.87x
# (S2) the activation bytes on top of the live peak after 20 steps. CPU workers only.
HEAP_RETENTION = 0.75
DS_BUCKET = 500_000_000  # DeepSpeed's default reduce/allgather bucket, elements
DS_MAX_LIVE = 1_000_000_000  # stage3_max_live_parameters default


def zero_buffer_bytes(n_params: int, zero_stage: int, workers: int, precision: str,
                      zero_config: dict, device: str) -> float:
    """Bytes DeepSpeed holds beyond the ZeRO paper's model states, per worker.

    - stage 0: the engine all-reduces gradients through a flattened copy of them
      (min(N, bucket) elements of the gradient dtype); a lone rank skips that all-reduce
      (`engine.build_engine`) and holds no copy.
    - stages 1-3 in fp32: the optimizer's fp32 master partition is a copy (4·N/k), besides
      the fp32 weights the paper counts; in 16-bit the paper's 12 bytes already hold it.
    - stages 1-2: gradients are copied into a contiguous reduce bucket of
      `reduce_bucket_size` elements (two with `overlap_comm`) unless `contiguous_gradients`
      is off, as `engine.deepspeed_config` sets it on CPU; stage 3 keeps one bucket.
    - stage 3: gathered full parameters stay live up to `stage3_max_live_parameters`, and the
      reduce-scatter concatenates the bucket's gradients into one more flat copy.
    On a GPU the caching allocator backs a whole bucket; on CPU only the pages written are
    resident, i.e. min(N, bucket) elements.
    """
    p = PRECISION_BYTES[precision]
    if zero_stage == 0:
        return min(n_params, DS_BUCKET) * p if workers > 1 else 0.0
    bucket = int(zero_config.get("reduce_bucket_size", DS_BUCKET))
    resident = bucket if device == "gpu" else min(bucket, n_params)
    master = 4 * n_params / workers if precision == "fp32" else 0
    if zero_stage in (1, 2):
        if not zero_config.get("contiguous_gradients", True):
            return master
        return master + resident * p * (2 if zero_config.get("overlap_comm", False) else 1)
    gathered = min(n_params, int(zero_config.get("stage3_max_live_parameters", DS_MAX_LIVE)))
    return master + 2 * resident * p + gathered * p

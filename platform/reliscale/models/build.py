"""Trial models built from a ladder size and a task, with transformers' own classes.

No weights are downloaded: every model is built from a config. Each model maps
a batch (dict of tensors) to per-example losses, so an objective can weigh the
examples by task group, and has `predict` for evaluation.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel, T5Config, T5Model, ViTConfig, ViTModel

from reliscale.evaluation.token_metrics import token_stats
from reliscale.models.heads import build_head
from reliscale.spec.ladder import FFN_RATIO, ModelSize, Shape

# Parameters that count as embeddings (excluded from non-embedding counts, as Kaplan et al.):
# token and position tables, the vocabulary projection, and the ViT class token.
EMBEDDING_PARAM_KEYS = ("embed_tokens", "position_embeddings", "cls_token", "lm_head", "shared.")


def llama_config(shape: Shape, max_len: int, vocab_size: int = 1) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=shape.width, intermediate_size=shape.ffn_width(FFN_RATIO["decoder"]),
        num_hidden_layers=shape.depth, num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads, vocab_size=vocab_size, max_position_embeddings=max_len,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
        attn_implementation="sdpa",
    )


def embeds_only_llama(shape: Shape, max_len: int) -> LlamaModel:
    """A Llama stack fed with `inputs_embeds`: its token table would be an unused parameter
    (DDP refuses those, and it would count as weights that never train)."""
    model = LlamaModel(llama_config(shape, max_len))
    model.embed_tokens = None
    return model


class ICLDecoder(nn.Module):
    """GPT-style in-context regressor: (x, y) pairs embedded as alternating tokens (Garg et al.).

    Tokens have d+1 channels, x in the first d and y in the last, so that the token type is
    visible in the input: with rotary positions (no absolute position embedding) a y token
    (y, 0, ..., 0) would otherwise look like an x token.
    """

    def __init__(self, shape: Shape, dim: int, points: int):
        super().__init__()
        self.read_in = nn.Linear(dim + 1, shape.width)
        self.backbone = embeds_only_llama(shape, 2 * points)
        self.read_out = nn.Linear(shape.width, 1)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, y = batch["x"], batch["y"]
        b, n, d = x.shape
        x_tok = torch.cat([x, torch.zeros_like(x[..., :1])], dim=-1)
        y_tok = torch.cat([torch.zeros_like(x), y.unsqueeze(-1)], dim=-1)
        tokens = torch.stack([x_tok, y_tok], dim=2).reshape(b, 2 * n, d + 1)  # x1, y1, x2, y2, ...
        h = self.backbone(inputs_embeds=self.read_in(tokens)).last_hidden_state
        return self.read_out(h[:, ::2]).squeeze(-1)  # prediction of y_i read at token x_i

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((self.predict(batch) - batch["y"]) ** 2).mean(dim=1)


class Classifier(nn.Module):
    """A backbone that turns an input into one feature vector, then a reliability head."""

    def __init__(self, backbone: nn.Module, width: int, num_classes: int, technique: str,
                 technique_opts: dict):
        super().__init__()
        self.backbone = backbone
        self.head = build_head(technique, width, num_classes, **technique_opts)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.backbone(batch["x"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.loss(self.features(batch), batch["y"], reduction="none")

    def predict(self, batch: dict[str, torch.Tensor]):
        return self.head.predict(self.features(batch))


class ViTBackbone(nn.Module):
    """ViT over a (1, 1, L) signal, patches of (1, p), or with `image=True` over a (channels, L, L)
    image, patches of (p, p); with a `dec` shape, a PaLI-style text decoder reads the image
    tokens and answers at a final query token."""

    def __init__(self, size: ModelSize, length: int, patch: int, channels: int = 1,
                 image: bool = False):
        super().__init__()
        s = size.enc
        rows, patch_rows = (length, patch) if image else (1, 1)
        self.vit = ViTModel(ViTConfig(
            hidden_size=s.width, num_hidden_layers=s.depth, num_attention_heads=s.heads,
            intermediate_size=s.ffn_width(FFN_RATIO["vit"]), image_size=(rows, length),
            patch_size=(patch_rows, patch), num_channels=channels, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ), add_pooling_layer=False)
        self.text = None
        if size.dec is not None:
            n_tokens = (rows // patch_rows) * (length // patch) + 2
            self.bridge = nn.Linear(s.width, size.dec.width)
            self.query = nn.Parameter(torch.zeros(1, 1, size.dec.width))
            self.text = embeds_only_llama(size.dec, n_tokens)
        self.out_width = s.width if size.dec is None else size.dec.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.vit(pixel_values=x).last_hidden_state
        if self.text is None:
            return h[:, 0]
        seq = torch.cat([self.bridge(h), self.query.expand(h.shape[0], -1, -1)], dim=1)
        return self.text(inputs_embeds=seq).last_hidden_state[:, -1]


class EncDecBackbone(nn.Module):
    """T5-style encoder over signal patches; the decoder answers from one start token."""

    def __init__(self, size: ModelSize, length: int, patch: int):
        super().__init__()
        enc, dec = size.enc, size.dec or size.enc
        if enc.width != dec.width:
            raise ValueError(f"encdec needs equal encoder/decoder widths, got {enc.width} and {dec.width}")
        self.patch = patch
        self.embed = nn.Linear(patch, enc.width)
        self.start = nn.Parameter(torch.zeros(1, 1, enc.width))
        self.t5 = T5Model(T5Config(
            d_model=enc.width, d_kv=enc.width // enc.heads, num_heads=enc.heads,
            d_ff=enc.ffn_width(FFN_RATIO["encdec"]), num_layers=enc.depth,
            num_decoder_layers=dec.depth, feed_forward_proj="gated-gelu", vocab_size=1,
            dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=None,
        ))
        self.out_width = enc.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(x.shape[0], -1, self.patch)
        out = self.t5(inputs_embeds=self.embed(patches),
                      decoder_inputs_embeds=self.start.expand(x.shape[0], -1, -1))
        return out.last_hidden_state[:, -1]


class DecoderBackbone(nn.Module):
    """Causal decoder over signal patches, read at the last token."""

    def __init__(self, size: ModelSize, length: int, patch: int):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch, size.enc.width)
        self.decoder = embeds_only_llama(size.enc, length // patch)
        self.out_width = size.enc.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(x.shape[0], -1, self.patch)
        return self.decoder(inputs_embeds=self.embed(patches)).last_hidden_state[:, -1]


BACKBONES = {"vit": ViTBackbone, "encdec": EncDecBackbone, "decoder": DecoderBackbone}


class CausalLM(nn.Module):
    """Next-token prediction with a Llama decoder; per-example loss = mean token cross-entropy."""

    def __init__(self, shape: Shape, vocab_size: int, seq_len: int):
        super().__init__()
        self.backbone = LlamaModel(llama_config(shape, seq_len, vocab_size))
        self.lm_head = nn.Linear(shape.width, vocab_size, bias=False)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.lm_head(self.backbone(input_ids=batch["tokens"][:, :-1]).last_hidden_state)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.logits(batch)
        target = batch["tokens"][:, 1:]
        ce = nn.functional.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), reduction="none")
        return ce.view(target.shape).mean(dim=1)

    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per scored position: nll, confidence, correct, Brier, entropy (`TOKEN_STATS`), [B, T, 5];
        streamed over the vocabulary (`evaluation.token_metrics`), never the [B, T, V] logits."""
        hidden = self.backbone(input_ids=batch["tokens"][:, :-1]).last_hidden_state
        with full_parameter(self.lm_head.weight) as weight:
            stats = token_stats(hidden, weight, batch["tokens"][:, 1:])
        return torch.from_numpy(np.stack([getattr(stats, k).astype(np.float32) for k in TOKEN_STATS], -1))


TOKEN_STATS = ("nll", "confidence", "correct", "brier", "entropy")


@contextmanager
def full_parameter(param: nn.Parameter):
    """The whole parameter: under ZeRO-3 gathered from every rank for the block (DeepSpeed's public
    `GatheredParameters`; a module's forward does this itself, a read of `.weight` does not)."""
    if not hasattr(param, "ds_id"):
        yield param
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters([param]):
        yield param


def signal_classifier(trial, length: int, patch: int, num_classes: int) -> Classifier:
    """A trial's classifier over 1-D signals of `length` points, `patch` points per token."""
    backbone = BACKBONES[trial.family](trial.size, length, patch)
    opts = trial.spec.technique_options.model_dump()
    return Classifier(backbone, backbone.out_width, num_classes, trial.technique, opts)


def image_classifier(trial, size: int, patch: int, channels: int, num_classes: int) -> Classifier:
    """A trial's ViT classifier over (channels, size, size) images, `patch` x `patch` per token."""
    backbone = ViTBackbone(trial.size, size, patch, channels, image=True)
    opts = trial.spec.technique_options.model_dump()
    return Classifier(backbone, backbone.out_width, num_classes, trial.technique, opts)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameter counts; ZeRO-3-partitioned params report ds_numel."""
    total = nonemb = 0
    for name, p in model.named_parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        if not any(key in name for key in EMBEDDING_PARAM_KEYS):
            nonemb += n
    return total, nonemb


def meta_param_counts(build, two_axis: bool = False) -> dict[str, int]:
    """Exact parameter counts of the model `build()` returns, instantiated on the meta device (no memory)."""
    with torch.device("meta"):
        model = build()
    total, nonemb = count_params(model)
    counts = {"n_params": total, "n_params_nonembedding": nonemb}
    if two_axis:
        parts = _stack_modules(model)
        counts["n_params_enc"] = count_params(parts[0])[0]
        counts["n_params_dec"] = count_params(parts[1])[0]
    return counts


def _stack_modules(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    b = model.backbone
    if isinstance(b, ViTBackbone):
        return b.vit, b.text
    return b.t5.encoder, b.t5.decoder

"""CCR model with the 1-to-K contrastive objective (Nie et al., KDD 2024, arXiv 2406.18254).

Remote code: this file is what the Hub serves for `trust_remote_code`; it imports only torch, transformers
(public names) and its sibling `configuration_ccr.py`.
"""

import os
import shutil
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, is_torchdynamo_compiling

from .configuration_ccr import CCRConfig
from .sentence_transformers_ccr import write_sentence_transformers_files

# --------------------------------------------------------------------------------------------------------------------
# The 1-to-K contrastive loss: one implementation, used by the model and by everything else.
# --------------------------------------------------------------------------------------------------------------------


def _check_contrastive_inputs(B: int, T: int, text_image_ids: torch.Tensor) -> None:
    if not isinstance(text_image_ids, torch.Tensor):
        raise TypeError(f"text_image_ids must be a torch.Tensor, got {type(text_image_ids).__name__}")
    if text_image_ids.dtype.is_floating_point or text_image_ids.dtype == torch.bool:
        raise TypeError(f"text_image_ids must be an integer (long) tensor, got {text_image_ids.dtype}")
    if text_image_ids.dim() != 1 or text_image_ids.shape[0] != T:
        raise ValueError(f"text_image_ids must have shape ({T},) (one image index per text), got {tuple(text_image_ids.shape)}")
    if T == 0 or B == 0:
        raise ValueError(f"the contrastive loss needs at least one image and one text, got B={B}, T={T}")
    if bool(((text_image_ids < 0) | (text_image_ids >= B)).any()):
        raise ValueError(f"text_image_ids must lie in [0, {B}) (indices of the batch's images)")


def one_to_k_loss_from_logits(
    logits_per_image: torch.Tensor, text_image_ids: torch.Tensor, divide_by_k: bool = False
) -> torch.Tensor:
    """1-to-K ITC loss from precomputed logits `s_ij = v_i . t_j / tau` of shape (B, T).

    Same formula as :func:`one_to_k_contrastive_loss` (which calls this); the model uses it to reuse its logits.
    """
    if logits_per_image.dim() != 2:
        raise ValueError(f"logits_per_image must be (B, T), got shape {tuple(logits_per_image.shape)}")
    B, T = logits_per_image.shape
    _check_contrastive_inputs(B, T, text_image_ids)
    ids = text_image_ids.long()
    cols = torch.arange(T, device=logits_per_image.device)
    counts = torch.bincount(ids, minlength=B)  # |P_i|
    n_valid = (counts > 0).sum()  # images with >= 1 text: the only ones L_i2t averages over
    # log p(j | i) over all texts of the batch (all languages), read at each text's own image.
    logp_i2t = logits_per_image.log_softmax(dim=1)[ids, cols]  # (T,)
    # log p(i | j) over all images, read at each text's own image.
    logp_t2i = logits_per_image.log_softmax(dim=0)[ids, cols]  # (T,)
    loss_t2i = -logp_t2i.mean()
    if divide_by_k:
        k = counts.max().to(logits_per_image.dtype)
        loss_i2t = -logp_i2t.sum() / n_valid
        return (loss_i2t + loss_t2i) / (2.0 * k)
    weights = counts[ids].to(logits_per_image.dtype).reciprocal()  # 1 / |P_o(j)|
    loss_i2t = -(logp_i2t * weights).sum() / n_valid
    return (loss_i2t + loss_t2i) / 2.0


def one_to_k_contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_image_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    divide_by_k: bool = False,
) -> torch.Tensor:
    r"""1-to-K image-text contrastive loss, the paper's formula (Nie et al., KDD 2024):

    With `s_ij = v_i . t_j / tau`, `o(j)` the image of text j and `P_i = {j : o(j) = i}`:

        L_i2t = mean_{i : |P_i| > 0} [ -(1/|P_i|) sum_{j in P_i} log softmax_j'(s_ij')_j ]
        L_t2i = mean_j [ -log softmax_i'(s_i'j)_o(j) ]
        L     = (L_i2t + L_t2i) / 2

    Each image is contrasted against all texts of the batch in all languages in one softmax, its own captions
    being the positives; images may have different numbers of captions (missing languages are simply absent) and
    images without any text are left out of L_i2t (they still act as negatives in L_t2i).

    `divide_by_k=True` reproduces the authors' released code: the sum over positives (not the mean) and the whole
    loss divided by K = the largest number of captions of one image in the batch,
    `L = (mean_i [-sum_{j in P_i} log p_ij] + L_t2i) / (2K)`; with equal K per image L_i2t is unchanged and
    L_t2i is scaled by 1/K.

    Args:
        image_embeds: (B, D) L2-normalised image embeddings.
        text_embeds: (T, D) L2-normalised text embeddings.
        text_image_ids: (T,) long, index in [0, B) of each text's image.
        temperature: scalar tau (tensor or float), logits are cosine / tau.
        divide_by_k: use the authors' code normalisation instead of the paper's.
    Returns:
        The scalar loss.
    """
    if image_embeds.dim() != 2 or text_embeds.dim() != 2:
        raise ValueError(
            f"image_embeds must be (B, D) and text_embeds (T, D), got {tuple(image_embeds.shape)} and "
            f"{tuple(text_embeds.shape)}"
        )
    if image_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"embedding sizes differ: images {image_embeds.shape[1]}, texts {text_embeds.shape[1]}")
    logits_per_image = similarity_logits(image_embeds, text_embeds, temperature)
    return one_to_k_loss_from_logits(logits_per_image, text_image_ids, divide_by_k=divide_by_k)


def similarity_logits(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """`s_ij = v_i . t_j / tau` (B, T), always in fp32: under bf16 autocast the embeddings may come in bf16, but
    the logits, the temperature and the log-softmax over them stay in full precision (a bf16 logit has 8 bits of
    mantissa, too few for a softmax over hundreds of texts at tau = 0.07)."""
    dtype = torch.promote_types(torch.promote_types(image_embeds.dtype, text_embeds.dtype), torch.float32)
    with torch.autocast(device_type=image_embeds.device.type, enabled=False):
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.to(dtype)
        return image_embeds.to(dtype) @ text_embeds.to(dtype).t() / temperature


# --------------------------------------------------------------------------------------------------------------------
# Output, fusion encoder, heads.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CCROutput(ModelOutput):
    """Output of [`CCRModel`], modelled on `CLIPOutput` with the per-objective losses.

    loss: weighted sum of the objectives (when `return_loss`). loss_itc / loss_itm / loss_mlm: the 1-to-K ITC,
    MITM and CMLM losses (None when not computed). logits_per_image (B, T) / logits_per_text (T, B): cosine / tau
    on this process's batch. image_embeds (B, D) / text_embeds (T, D): L2-normalised projected embeddings.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_model_output: Any = None
    vision_model_output: Any = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


class CCRAttention(nn.Module):
    """Multi-head attention (self or cross) on scaled_dot_product_attention; plain Linear layers for HF init."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"fusion hidden size {hidden_size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(context)), self._split(self.v_proj(context))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :].bool()  # True = attend
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        n, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(n, length, -1))


class CCRFusionLayer(nn.Module):
    """BERT-style post-LN block: text self-attention, cross-attention over image tokens, feed-forward."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float, eps: float):
        super().__init__()
        self.self_attn = CCRAttention(hidden_size, num_heads, dropout)
        self.self_attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.cross_attn = CCRAttention(hidden_size, num_heads, dropout)
        self.cross_attn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.ffn_in = nn.Linear(hidden_size, intermediate_size)
        self.ffn_out = nn.Linear(intermediate_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        text = self.self_attn_norm(text + self.dropout(self.self_attn(text, text, text_mask)))
        text = self.cross_attn_norm(text + self.dropout(self.cross_attn(text, image_tokens)))
        return self.ffn_norm(text + self.dropout(self.ffn_out(F.gelu(self.ffn_in(text)))))


class CCRMLMHead(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


def _itm_head(config: CCRConfig, hidden: int, eps: float) -> nn.Module:
    """One Linear (`itm_head_type="linear"`, the default) or the authors' MLP (`"mlp"`): Linear(h, 2h) -> LayerNorm
    -> GELU -> Linear(2h, 2)."""
    if getattr(config, "itm_head_type", "linear") == "mlp":
        return nn.Sequential(
            nn.Linear(hidden, 2 * hidden), nn.LayerNorm(2 * hidden, eps=eps), nn.GELU(), nn.Linear(2 * hidden, 2)
        )
    return nn.Linear(hidden, 2)


class CCRFusionEncoder(nn.Module):
    """The fusion encoder with its two heads, the part of the model behind MITM, CMLM and ITM re-ranking.

    Image tokens (the vision tower's last hidden states) are projected to the text width; each layer runs text
    self-attention, cross-attention over those image tokens and a feed-forward block. The ITM head reads the first
    text token (match / no match), the MLM head every token.
    """

    def __init__(self, config: CCRConfig, vision_hidden_size: int, text_hidden_size: int):
        super().__init__()
        hidden = text_hidden_size
        heads = config.fusion_num_attention_heads or getattr(config.text_config, "num_attention_heads", 8)
        inter = config.fusion_intermediate_size or 4 * hidden
        dropout = float(getattr(config.text_config, "hidden_dropout_prob", 0.1) or 0.0)
        eps = float(getattr(config.text_config, "layer_norm_eps", 1e-12) or 1e-12)
        self.image_token_projection = nn.Linear(vision_hidden_size, hidden)
        self.image_token_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            [CCRFusionLayer(hidden, heads, inter, dropout, eps) for _ in range(config.num_fusion_layers)]
        )
        self.itm_head = _itm_head(config, hidden, eps)
        self.mlm_head = CCRMLMHead(hidden, int(config.text_config.vocab_size), eps)

    def image_tokens(self, vision_hidden_state: torch.Tensor) -> torch.Tensor:
        """(B, N, text hidden) tokens to cross-attend to, from (B, N, C) token states or a (B, C, H, W) feature map."""
        if vision_hidden_state.dim() == 4:
            vision_hidden_state = vision_hidden_state.flatten(2).transpose(1, 2)
        return self.image_token_norm(self.image_token_projection(vision_hidden_state))

    def forward(self, text_hidden: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Fused text states (P, L, H) of P (text, image) pairs."""
        for layer in self.layers:
            text_hidden = layer(text_hidden, text_mask, image_tokens)
        return text_hidden


# --------------------------------------------------------------------------------------------------------------------
# MITM sampling: the package's rules and the authors' (config.positive_sampling / negative_sampling).
# --------------------------------------------------------------------------------------------------------------------


def hardest_positive_probabilities(sim: torch.Tensor, positive: torch.Tensor, rule: str = "softmax") -> torch.Tensor:
    """Per row (image), the probability of drawing each column (text) as its MITM positive; 0 off `positive`.

    `sim` (B, T) are logits `v_i . t_j / tau`, `positive` (B, T) bool marks each image's captions (every row with
    at least one). "softmax": softmax(-s_ij) over the row's positives (the least similar caption is the likeliest).
    "ccrk" (the authors' code): with p = softmax_j(s_ij) over all texts and M the largest p of the matrix,
    probability proportional to M - p_ij + 1e-5 over the row's positives (flatter for most rows; the
    text holding M itself is almost never drawn).
    """
    sim = sim.float()
    if rule == "softmax":
        return (-sim).masked_fill(~positive, float("-inf")).softmax(dim=1)
    if rule == "ccrk":
        p = sim.softmax(dim=1)
        weights = ((p.max() - p) + 1e-5).masked_fill(~positive, 0.0)
        return weights / weights.sum(dim=1, keepdim=True)
    raise ValueError(f"unknown positive_sampling {rule!r}; choose 'softmax' or 'ccrk'")


def hard_negative_probabilities(sim: torch.Tensor, positive: torch.Tensor, rule: str = "softmax") -> torch.Tensor:
    """Per row (query), the probability of drawing each column as its hard negative; 0 on `positive`.

    "softmax": softmax of `sim` over the row's negatives only. "ccrk" (the authors' code): softmax over the whole
    row, positives included, + 1e-5, then the positives set to 0 (flatter: the positives' share is spread out).
    """
    sim = sim.float()
    if rule == "softmax":
        return sim.masked_fill(positive, float("-inf")).softmax(dim=1)
    if rule == "ccrk":
        weights = (sim.softmax(dim=1) + 1e-5).masked_fill(positive, 0.0)
        return weights / weights.sum(dim=1, keepdim=True)
    raise ValueError(f"unknown negative_sampling {rule!r}; choose 'softmax' or 'ccrk'")


# State-dict keys written before the fusion encoder became one module (CCRModel.from_pretrained renames them).
_PRE_FUSION_MODULE_KEYS = {
    r"^fusion_layers\.": "fusion.layers.",
    r"^image_token_projection\.": "fusion.image_token_projection.",
    r"^image_token_norm\.": "fusion.image_token_norm.",
    r"^itm_head\.": "fusion.itm_head.",
    r"^mlm_head\.": "fusion.mlm_head.",
}


def _hidden_size(config: Any) -> int:
    size = getattr(config, "hidden_size", None)
    if size is None and getattr(config, "hidden_sizes", None):
        size = config.hidden_sizes[-1]  # conv nets (ResNet, ConvNeXt)
    if size is None:
        raise ValueError(f"cannot tell the hidden size of a {type(config).__name__} tower")
    return int(size)


# A tower call costs about as much as this many extra padded tokens (measured: tiny-bert forward + backward on CPU).
_TEXT_GROUP_OVERHEAD_TOKENS = 256


def text_length_groups(
    attention_mask: torch.Tensor, overhead_tokens: int = _TEXT_GROUP_OVERHEAD_TOKENS
) -> list[tuple[torch.Tensor, int]] | None:
    """Rows of a right-padded text batch split into groups that the text tower runs at their own longest length:
    ``(rows, length)`` pairs, shortest group first.

    A tower spends as much on padding as on tokens: EmojiCCR's training batches mix names of ~6 tokens with keyword
    lists cut at 32, padded to 32. The groups minimise padded tokens plus `overhead_tokens` per tower call (a dynamic
    programme over lengths rounded up to 8). A text's embedding does not change: its tokens never attend to padding.
    None when one group is best, or when the batch is not right-padded.
    """
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    width = mask.shape[1]
    if mask.shape[0] < 2 or not torch.equal(mask, torch.arange(width, device=mask.device) < lengths[:, None]):
        return None
    rounded = ((lengths.clamp(min=1) + 7) // 8 * 8).clamp(max=width)
    values, counts = torch.unique(rounded, return_counts=True)
    values, ends = values.tolist(), [0] + counts.cumsum(0).tolist()
    best, cut = [0] + [float("inf")] * len(values), [0] * (len(values) + 1)
    for b in range(1, len(values) + 1):  # best[b]: cost of the b shortest lengths; the last group is (cut[b], b]
        for a in range(b):
            cost = best[a] + (ends[b] - ends[a]) * values[b - 1] + overhead_tokens
            if cost < best[b]:
                best[b], cut[b] = cost, a
    if cut[-1] == 0:
        return None
    groups, b = [], len(values)
    while b > 0:
        low = values[cut[b] - 1] if cut[b] > 0 else 0
        rows = torch.nonzero((rounded > low) & (rounded <= values[b - 1])).squeeze(1)
        groups.append((rows, int(lengths[rows].max())))
        b = cut[b]
    return groups[::-1]


def _build_tower(config: Any, keep_pooler: bool) -> PreTrainedModel:
    """AutoModel from a config; drop the pooler when it is unused (unused parameters break DDP)."""
    if not keep_pooler:
        try:
            return AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            pass
    return AutoModel.from_config(config)


# --------------------------------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------------------------------


class CCRModel(PreTrainedModel):
    r"""Dual encoder (any vision tower + any text tower, like `VisionTextDualEncoderModel`) trained with 1-to-K
    contrastive learning, plus an optional fusion encoder with ITM and MLM heads (MITM and CMLM objectives).

    `get_image_features` / `get_text_features` return projected, *unnormalised* embeddings as plain tensors (the
    CLIP 4.x behaviour; transformers 5's CLIP returns a `BaseModelOutputWithPooling` instead).
    """

    config_class = CCRConfig
    config: CCRConfig
    base_model_prefix = "ccr"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(
        self,
        config: CCRConfig | None = None,
        vision_model: PreTrainedModel | None = None,
        text_model: PreTrainedModel | None = None,
    ):
        if config is None:
            if vision_model is None or text_model is None:
                raise ValueError("CCRModel needs either a config or both a vision_model and a text_model")
            config = CCRConfig.from_vision_text_configs(vision_model.config, text_model.config)
        # Duck-typed: remote-code loading may hold CCRConfig from another copy of configuration_ccr.py.
        if getattr(config, "model_type", None) != CCRConfig.model_type:
            source = getattr(config, "_name_or_path", "") or ""
            raise TypeError(
                f"CCRModel needs a CCR config (model_type {CCRConfig.model_type!r}); got model_type "
                f"{getattr(config, 'model_type', None)!r}" + (f" from {source}" if source else "")
                + ": not a CCR model (load it with its own class, or AutoModel)"
            )
        super().__init__(config)

        if vision_model is None:
            vision_model = _build_tower(config.vision_config, keep_pooler=config.vision_pooling in ("auto", "pooler"))
        if text_model is None:
            text_model = _build_tower(config.text_config, keep_pooler=config.text_pooling == "pooler")
        self.vision_model = vision_model
        self.text_model = text_model
        # The towers share the composite config's sub-configs, so later changes (attention implementation) sync.
        self.config.vision_config._attn_implementation = self.vision_model.config._attn_implementation
        self.config.text_config._attn_implementation = self.text_model.config._attn_implementation
        self.vision_model.config = self.config.vision_config
        self.text_model.config = self.config.text_config

        self.vision_embed_dim = _hidden_size(config.vision_config)
        self.text_embed_dim = _hidden_size(config.text_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, config.projection_dim, bias=False)
        self.tau = nn.Parameter(torch.tensor(float(config.tau_init)))

        self.fusion = (
            CCRFusionEncoder(config, self.vision_embed_dim, self.text_embed_dim) if config.num_fusion_layers > 0 else None
        )

        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CCRModel):
            from transformers import initialization as init

            init.constant_(module.tau, float(self.config.tau_init))

    # ---------------------------------------------------------------- encoders
    @property
    def temperature(self) -> torch.Tensor:
        """The contrastive temperature tau, clamped to [tau_min, tau_max]."""
        return self.tau.clamp(self.config.tau_min, self.config.tau_max)

    def _pool_vision(self, outputs: Any) -> torch.Tensor:
        mode = self.config.vision_pooling
        if mode in ("auto", "pooler"):
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is not None:
                return pooled.flatten(1)  # conv towers give (B, C, 1, 1)
            if mode == "pooler":
                raise ValueError("vision_pooling='pooler' but the vision tower returns no pooler_output")
        hidden = outputs.last_hidden_state
        if hidden.dim() == 4:  # (B, C, H, W) feature map: no CLS token
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if mode == "cls" else hidden.mean(dim=1)

    def _pool_text(self, outputs: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
        mode = self.config.text_pooling
        if mode == "pooler":
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError("text_pooling='pooler' but the text tower returns no pooler_output")
            return outputs.pooler_output
        hidden = outputs.last_hidden_state
        if mode == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(dim=1)
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def _run_vision(self, pixel_values: torch.Tensor) -> Any:
        """The vision tower on pixels cast to its dtype (processors give float32; a bf16/fp16 model takes them)."""
        dtype = next(self.vision_model.parameters()).dtype
        return self.vision_model(pixel_values=pixel_values.to(dtype) if pixel_values.is_floating_point() else pixel_values)

    def _text_positions(self) -> int | None:
        """How many tokens the text tower's position embeddings take (RoBERTa-style towers start after padding_idx)."""
        embeddings = getattr(self.text_model, "embeddings", None)
        table = getattr(embeddings, "position_embeddings", None)
        if not isinstance(table, nn.Embedding):
            return None
        return table.num_embeddings - (int(embeddings.padding_idx) + 1 if hasattr(embeddings, "padding_idx") else 0)

    def _fit_text(self, input_ids, attention_mask, token_type_ids):
        """Texts longer than the tower takes (the zero-shot pipeline does not truncate) are cut like the processor
        cuts them: the first tokens, then the text's last token ([SEP] / </s>). Assumes right padding."""
        limit = self._text_positions()
        if limit is None or input_ids.shape[1] <= limit:
            return input_ids, attention_mask, token_type_ids
        lengths = attention_mask.long().sum(1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = input_ids[rows, (lengths - 1).clamp(min=0)]
        input_ids = input_ids[:, :limit].clone()
        input_ids[lengths > limit, -1] = last[lengths > limit]
        return input_ids, attention_mask[:, :limit], None if token_type_ids is None else token_type_ids[:, :limit]

    def _run_text(self, input_ids, attention_mask, token_type_ids=None):
        """The text tower, run per length group (:func:`text_length_groups`) when that saves work; the outputs are
        put back in the batch's order and width (hidden states beyond a group's longest text are zeros)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        # The groups depend on the values of the mask: a traced or exported graph must not bake in one batch's groups.
        tracing = torch.jit.is_tracing() or is_torchdynamo_compiling() or torch.onnx.is_in_onnx_export()
        groups = None if attention_mask is None or tracing else text_length_groups(attention_mask)
        if groups is None:
            return self.text_model(**kwargs)
        width, hidden, pooled = input_ids.shape[1], [], []
        for rows, length in groups:
            output = self.text_model(**{key: value[rows, :length] for key, value in kwargs.items()})
            hidden.append(F.pad(output.last_hidden_state, (0, 0, 0, width - length)))
            pooled.append(getattr(output, "pooler_output", None))
        order = torch.empty_like(input_ids[:, 0])
        order[torch.cat([rows for rows, _ in groups])] = torch.arange(len(order), device=order.device)
        return BaseModelOutputWithPooling(
            last_hidden_state=torch.cat(hidden)[order],
            pooler_output=None if pooled[0] is None else torch.cat(pooled)[order],
        )

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected, unnormalised image embeddings (B, projection_dim)."""
        return self.visual_projection(self._pool_vision(self._run_vision(pixel_values)))

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Projected, unnormalised text embeddings (T, projection_dim)."""
        if attention_mask is not None:
            input_ids, attention_mask, token_type_ids = self._fit_text(input_ids, attention_mask, token_type_ids)
        outputs = self._run_text(input_ids, attention_mask, token_type_ids)
        return self.text_projection(self._pool_text(outputs, attention_mask))

    # ---------------------------------------------------------------- fusion (stage 2)
    def init_mlm_head_from_text_lm(self, lm_model: PreTrainedModel) -> None:
        """Copy a masked-LM's head (BERT's `cls.predictions`, XLM-R's `lm_head`: dense -> act -> LayerNorm ->
        decoder) into the CMLM head, as the authors' code starts from the text encoder's LM head.

        Raises a ValueError when `lm_model` has no head of that shape (hidden size and vocabulary must match).
        """
        head = self._require_fusion().mlm_head
        decoder = lm_model.get_output_embeddings()
        head_modules = [m for name, m in lm_model.named_modules() if name.startswith(("cls.", "lm_head"))]
        dense = next((m for m in head_modules if isinstance(m, nn.Linear) and m is not decoder), None)
        norm = next((m for m in head_modules if isinstance(m, nn.LayerNorm)), None)
        shapes_fit = (
            isinstance(decoder, nn.Linear) and dense is not None and norm is not None
            and decoder.weight.shape == head.decoder.weight.shape and dense.weight.shape == head.dense.weight.shape
        )
        if not shapes_fit:
            raise ValueError(
                f"{type(lm_model).__name__} has no masked-LM head of the CMLM head's shape "
                f"(vocabulary {head.decoder.weight.shape[0]}, hidden {head.dense.weight.shape[0]})"
            )
        with torch.no_grad():
            head.dense.load_state_dict(dense.state_dict())
            head.norm.load_state_dict(norm.state_dict())
            head.decoder.weight.copy_(decoder.weight)
            bias = decoder.bias if decoder.bias is not None else getattr(lm_model.cls.predictions, "bias", None)
            if bias is not None:
                head.decoder.bias.copy_(bias)

    def _require_fusion(self) -> CCRFusionEncoder:
        if self.fusion is None:
            raise ValueError("this model has no fusion encoder (config.num_fusion_layers == 0): no ITM / MLM")
        return self.fusion

    def get_image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, N, H) that the fusion encoder cross-attends to (H = text hidden size)."""
        fusion = self._require_fusion()
        return fusion.image_tokens(self._run_vision(pixel_values).last_hidden_state)

    def itm_scores(
        self, image_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Match logits (P,) for P (image, text) pairs: image_tokens (P, N, H), input_ids/attention_mask (P, L).

        Higher means a better match. `config.itm_score`: "logit_diff" (default) = logit(match) - logit(no match),
        i.e. log p(match) - log p(no match); "positive_logit" = the raw match logit, as the authors' code ranks.
        """
        fusion = self._require_fusion()
        if image_tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(f"need one image per text: {image_tokens.shape[0]} images, {input_ids.shape[0]} texts")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_hidden = self._run_text(input_ids, attention_mask).last_hidden_state
        logits = fusion.itm_head(fusion(text_hidden, attention_mask, image_tokens)[:, 0])
        if getattr(self.config, "itm_score", "logit_diff") == "positive_logit":
            return logits[:, 1]
        return logits[:, 1] - logits[:, 0]

    # ---------------------------------------------------------------- objectives
    @staticmethod
    def _sample(probabilities: torch.Tensor) -> torch.Tensor:
        """One index per row, drawn with the row's probabilities (zeros are never drawn)."""
        return torch.multinomial(probabilities, 1).squeeze(1)

    def fusion_losses(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        text_image_ids: torch.Tensor,
        image_tokens: torch.Tensor,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The losses of the fusion encoder: `(loss_itm, loss_mlm)`, each None when it is not computed.

        MITM: per image, a positive caption drawn among its captions in every language, favouring the least similar
        one (hardest positive), a negative caption drawn from the other images' captions in every language, and a
        negative image for the positive caption, both favouring the most similar; cross-entropy of the ITM head.
        CMLM: masked-token prediction on each image's positive caption, read from `mlm_input_ids` / `mlm_labels`
        (see `forward`), through the fusion encoder conditioned on the image.
        Negatives are sampled within this process's batch (as ALBEF / X-VLM do), not across processes.
        """
        fusion = self._require_fusion()
        B = image_embeds.shape[0]
        device = image_embeds.device
        ids = text_image_ids.long()
        with torch.no_grad():
            sim = similarity_logits(image_embeds, text_embeds, self.temperature)  # (B, T)
            positive = ids[None, :] == torch.arange(B, device=device)[:, None]
            images = torch.nonzero(positive.any(dim=1)).squeeze(1)  # images with >= 1 text
            positive_rule = getattr(self.config, "positive_sampling", "softmax")
            negative_rule = getattr(self.config, "negative_sampling", "softmax")
            # Hardest positive: the image's less similar captions are the likelier draws.
            pos_text = self._sample(hardest_positive_probabilities(sim, positive, positive_rule)[images])
        loss_itm = None
        if self.config.itm_weight > 0 and images.numel() >= 2:
            with torch.no_grad():
                # A negative text for each image, among all languages.
                neg_text = self._sample(hard_negative_probabilities(sim[images], positive[images], negative_rule))
                # A negative image for each positive text, among the images of the batch.
                own_image = torch.zeros(images.numel(), B, dtype=torch.bool, device=device)
                own_image[torch.arange(images.numel(), device=device), images] = True
                neg_image = self._sample(hard_negative_probabilities(sim[:, pos_text].t(), own_image, negative_rule))
            img_idx = torch.cat([images, images, neg_image])
            txt_idx = torch.cat([pos_text, neg_text, pos_text])
            fused = fusion(text_hidden[txt_idx], attention_mask[txt_idx], image_tokens[img_idx])
            labels = torch.zeros(img_idx.numel(), dtype=torch.long, device=device)
            labels[: images.numel()] = 1
            loss_itm = F.cross_entropy(fusion.itm_head(fused[:, 0]), labels)

        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("CMLM needs both mlm_input_ids and mlm_labels (or neither, for no CMLM)")
        loss_mlm = None
        if self.config.mlm_weight > 0 and mlm_input_ids is not None and images.numel() >= 1:
            masked_ids, labels = mlm_input_ids[pos_text], mlm_labels[pos_text]
            mask = attention_mask[pos_text]
            hidden = self._run_text(masked_ids, mask).last_hidden_state
            logits = fusion.mlm_head(fusion(hidden, mask, image_tokens[images]))
            n_masked = (labels != -100).sum().clamp(min=1)
            loss_mlm = (
                F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")
                / n_masked
            )
        return loss_itm, loss_mlm

    def weighted_loss(
        self, loss_itc: torch.Tensor | None, loss_itm: torch.Tensor | None, loss_mlm: torch.Tensor | None
    ) -> torch.Tensor | None:
        """`itc_weight * L_itc + itm_weight * L_itm + mlm_weight * L_mlm` over the losses that are not None."""
        parts = [
            weight * part
            for weight, part in (
                (self.config.itc_weight, loss_itc),
                (self.config.itm_weight, loss_itm),
                (self.config.mlm_weight, loss_mlm),
            )
            if part is not None
        ]
        return None if not parts else sum(parts[1:], parts[0])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        text_image_ids: torch.Tensor | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        return_loss: bool | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        compute_itc: bool = True,
    ) -> CCROutput:
        r"""Encode a batch of B images and T texts; with `return_loss=True` compute the training objectives.

        Args:
            input_ids, attention_mask: (T, L) texts (all captions of the batch, any languages).
            pixel_values: (B, C, H, W) images.
            text_image_ids: (T,) long, index in [0, B) of each text's image. Default: text j describes image j
                (then T must equal B).
            mlm_input_ids, mlm_labels: (T, L) masked texts and labels (-100 = not masked). CMLM is computed only
                from these: forward never masks by itself, and without them `loss_mlm` is None. The package's
                `modeling_ccr.masking.add_mlm_inputs` makes them (CCRTrainer does, in its training step).
            return_loss: compute `loss = itc_weight * L_itc + itm_weight * L_itm + mlm_weight * L_mlm`, like
                `CLIPModel` on this process's batch: L_itc is the 1-to-K loss of the logits below; MITM/CMLM need
                `num_fusion_layers > 0`. Training on several processes (the negatives of all of them) and the
                baseline objectives are `CCRTrainer`'s job (`modeling_ccr.objectives`).
            token_type_ids: passed to the text tower when given.
            return_dict: accepted for API compatibility; a `CCROutput` is always returned.
            compute_itc: with `return_loss`, False leaves L_itc out (`loss_itc` None, `loss` the MITM/CMLM part or
                None) for a caller that computes the contrastive loss itself, as CCRTrainer does.
        """
        if input_ids is None or pixel_values is None:
            raise ValueError("CCRModel.forward needs both input_ids and pixel_values")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids, attention_mask, token_type_ids = self._fit_text(input_ids, attention_mask, token_type_ids)
        vision_outputs = self._run_vision(pixel_values)
        text_outputs = self._run_text(input_ids, attention_mask, token_type_ids)
        # Embeddings leave the towers in fp32 (bf16 under autocast): what the losses and the all-gather see.
        image_embeds = F.normalize(self.visual_projection(self._pool_vision(vision_outputs)).float(), dim=-1)
        text_embeds = F.normalize(self.text_projection(self._pool_text(text_outputs, attention_mask)).float(), dim=-1)

        if self.training:  # keep the parameter itself inside the range (X-VLM style), not just its use
            with torch.no_grad():
                self.tau.clamp_(self.config.tau_min, self.config.tau_max)
        logits_per_image = similarity_logits(image_embeds, text_embeds, self.temperature)
        logits_per_text = logits_per_image.t()

        loss = loss_itc = loss_itm = loss_mlm = None
        if return_loss:
            B, T = image_embeds.shape[0], text_embeds.shape[0]
            if text_image_ids is None:
                if B != T:
                    raise ValueError(f"text_image_ids is required when the numbers of images ({B}) and texts ({T}) differ")
                text_image_ids = torch.arange(B, device=image_embeds.device)
            text_image_ids = text_image_ids.to(image_embeds.device)
            if compute_itc:
                loss_itc = one_to_k_loss_from_logits(
                    logits_per_image, text_image_ids, divide_by_k=self.config.itc_divide_by_k
                )
            if self.fusion is not None and (self.config.itm_weight > 0 or self.config.mlm_weight > 0):
                loss_itm, loss_mlm = self.fusion_losses(
                    image_embeds,
                    text_embeds,
                    text_image_ids,
                    self.fusion.image_tokens(vision_outputs.last_hidden_state),
                    text_outputs.last_hidden_state,
                    attention_mask,
                    mlm_input_ids,
                    mlm_labels,
                )
            loss = self.weighted_loss(loss_itc, loss_itm, loss_mlm)

        return CCROutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_mlm=loss_mlm,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    # ---------------------------------------------------------------- composition / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`, also reading folders saved before the fusion encoder was one module.

        Those hold `fusion_layers.*`, `image_token_projection.*`, ... instead of `fusion.layers.*`, ...; they are
        renamed through from_pretrained's public `key_mapping` argument (extended, never replaced, when given).
        transformers reverses a renaming it applied when the model is saved again, so such a model keeps the layout
        it came in, which both layouts' code reads.
        """
        kwargs["key_mapping"] = {**_PRE_FUSION_MODULE_KEYS, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        _check_finite_weights(loaded[0] if isinstance(loaded, tuple) else loaded, pretrained_model_name_or_path)
        return loaded

    @classmethod
    def from_vision_text_pretrained(
        cls,
        vision_model_name_or_path: str | None = None,
        text_model_name_or_path: str | None = None,
        **kwargs: Any,
    ) -> "CCRModel":
        """Compose a CCRModel from pretrained towers (like `VisionTextDualEncoderModel.from_vision_text_pretrained`).

        Keyword arguments named like CCRConfig fields (projection_dim, num_fusion_layers, vision_pooling, ...) go to
        the config; other `vision_*` / `text_*` arguments go to the towers' `from_pretrained` (e.g.
        `vision_model=<instance>` or `text_revision=...`). `mlm_head_from_text_lm=True` starts the CMLM head from
        the text checkpoint's masked-LM head (the authors' code does; see `init_mlm_head_from_text_lm`). A composite checkpoint such as CLIP or SigLIP gives its
        vision tower. The projections, temperature and fusion layers are newly initialised.
        """
        config_fields = set(CCRConfig.__dataclass_fields__) if hasattr(CCRConfig, "__dataclass_fields__") else set()
        config_kwargs, vision_kwargs, text_kwargs = {}, {}, {}
        for key, value in kwargs.items():
            if key in config_fields:
                config_kwargs[key] = value
            elif key.startswith("vision_"):
                vision_kwargs[key[len("vision_") :]] = value
            elif key.startswith("text_"):
                text_kwargs[key[len("text_") :]] = value
            else:
                config_kwargs[key] = value
        vision_pooling = config_kwargs.get("vision_pooling", "auto")
        text_pooling = config_kwargs.get("text_pooling", "cls")

        vision_model = vision_kwargs.pop("model", None)
        if vision_model is None:
            if vision_model_name_or_path is None:
                raise ValueError("give vision_model_name_or_path (or vision_model=<a PreTrainedModel>)")
            vision_model = _load_tower(
                vision_model_name_or_path, "vision_config", vision_pooling in ("auto", "pooler"), vision_kwargs
            )
        text_model = text_kwargs.pop("model", None)
        if text_model is None:
            if text_model_name_or_path is None:
                raise ValueError("give text_model_name_or_path (or text_model=<a PreTrainedModel>)")
            text_model = _load_tower(text_model_name_or_path, "text_config", text_pooling == "pooler", text_kwargs)
        mlm_head_from_lm = bool(config_kwargs.pop("mlm_head_from_text_lm", False))
        config = CCRConfig.from_vision_text_configs(vision_model.config, text_model.config, **config_kwargs)
        model = cls(config=config, vision_model=vision_model, text_model=text_model)
        if mlm_head_from_lm and model.fusion is not None and text_model_name_or_path is not None:
            from transformers import AutoModelForMaskedLM

            model.init_mlm_head_from_text_lm(AutoModelForMaskedLM.from_pretrained(text_model_name_or_path, **text_kwargs))
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """Save as safetensors (the default) and ship processing_ccr.py beside the model files.

        The folder also gets the `auto_map` entry `pipeline("zero-shot-image-classification", ...)` loads and the
        sentence-transformers files (`sentence_transformers_ccr.py`).

        `register_for_auto_class` makes transformers copy configuration_ccr.py and modeling_ccr.py and write
        `auto_map`; the processor file is copied too so the folder holds all three remote-code files.
        """
        if kwargs.get("safe_serialization") is False:
            raise ValueError("CCR models are saved as safetensors only")
        # transformers writes one auto_map entry per registered class; the zero-shot pipeline loads this one.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **_EXTRA_AUTO_MAP}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        write_sentence_transformers_files(os.fspath(save_directory))  # SentenceTransformer(folder) loads it
        processing_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "processing_ccr.py")
        target = os.path.join(os.fspath(save_directory), "processing_ccr.py")
        if os.path.isfile(processing_file) and not os.path.exists(target):
            shutil.copy(processing_file, target)
        return result


def _check_finite_weights(model: nn.Module, source: Any) -> None:
    """Corrupted weight bytes load silently as NaN / inf: refuse them, naming the first bad tensor."""
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(
                f"the weights loaded from {source} are corrupted: {name} holds {bad} NaN/inf value(s) of "
                f"{tensor.numel()}; re-download or re-save the model"
            )


def _load_tower(path: str, key: str, keep_pooler: bool, kwargs: dict[str, Any]) -> PreTrainedModel:
    """Load one tower's pretrained weights; CLIP/SigLIP checkpoints give their `key` tower."""
    kwargs = dict(kwargs)
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
    sub = getattr(config, key, None)
    if sub is not None and hasattr(sub, "model_type"):
        import transformers

        names = {"vision_config": "VisionModel", "text_config": "TextModel"}
        prefix = {"clip": "CLIP", "siglip": "Siglip", "siglip2": "Siglip2", "chinese_clip": "ChineseCLIP"}
        cls_name = prefix.get(config.model_type, "") + names[key]
        tower_cls = getattr(transformers, cls_name, None)
        if not prefix.get(config.model_type) or tower_cls is None:
            raise ValueError(
                f"cannot take the {key} tower out of a {config.model_type!r} checkpoint; pass "
                f"{key.split('_')[0]}_model=<a loaded PreTrainedModel> instead"
            )
        return tower_cls.from_pretrained(path, config=sub, **kwargs)
    if not keep_pooler:
        try:
            return AutoModel.from_pretrained(path, config=config, add_pooling_layer=False, **kwargs)
        except TypeError:
            pass
    return AutoModel.from_pretrained(path, config=config, **kwargs)


CCRModel.register_for_auto_class("AutoModel")
_EXTRA_AUTO_MAP = {"AutoModelForZeroShotImageClassification": "modeling_ccr.CCRModel"}

__all__ = [
    "hard_negative_probabilities",
    "hardest_positive_probabilities",
    "CCRFusionEncoder", "CCRModel", "CCROutput", "one_to_k_contrastive_loss", "one_to_k_loss_from_logits"]

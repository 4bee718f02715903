"""Configuration of the CCR 1-to-K model (remote code: imports only torch, transformers and sibling files)."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

try:  # transformers >= 5 declares composite sub-configs with a spec; keeps attn/dtype dispatch to the towers.
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # pragma: no cover - older 5.x releases
    SubConfigSpec = None

_POOLING_VISION = ("auto", "pooler", "cls", "mean")
_POOLING_TEXT = ("cls", "pooler", "mean")
_SAMPLING = ("softmax", "ccrk")
_MLM_MASKING = ("bernoulli", "ccrk")
_ITM_HEADS = ("linear", "mlp")
_ITM_SCORES = ("logit_diff", "positive_logit")


def _as_config(value: Any, default_type: str, name: str) -> PretrainedConfig:
    """Turn a dict / config / None into a transformers config; composite configs (CLIP, SigLIP) give their tower."""
    if value is None:
        value = {}
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", default_type)
        value = AutoConfig.for_model(model_type, **value)
    if not isinstance(value, PretrainedConfig):
        raise TypeError(f"`{name}` must be a dict, a PretrainedConfig or None, got {type(value).__name__}")
    return value


def _tower_config(config: PretrainedConfig, key: str) -> PretrainedConfig:
    """CLIPConfig/SiglipConfig hold both towers: pick the requested one, as VisionTextDualEncoder does for CLIP."""
    sub = getattr(config, key, None)
    return sub if isinstance(sub, PretrainedConfig) else config


class CCRConfig(PretrainedConfig):
    r"""
    Configuration of [`CCRModel`]: a vision tower and a text tower (any transformers encoders), projections to a
    shared space, a learnable temperature and an optional fusion encoder with ITM and MLM heads.

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*): config of the vision tower (default: ViT).
        text_config (`dict` or `PretrainedConfig`, *optional*): config of the text tower (default: XLM-R).
        projection_dim (`int`, defaults to 256): size of the shared embedding space.
        tau_init (`float`, defaults to 0.07): initial contrastive temperature tau (logits are `cos / tau`).
        tau_min, tau_max (`float`, defaults to 0.001 and 0.5): tau is clamped to this range. (The name is not
            `temperature`: transformers 5 refuses to save configs with generation-parameter names.)
        num_fusion_layers (`int`, defaults to 0): layers of the fusion encoder (self-attention over text,
            cross-attention over image tokens). 0 gives a pure dual encoder trained with ITC only.
        fusion_num_attention_heads (`int`, *optional*): heads of the fusion layers (default: the text tower's).
        fusion_intermediate_size (`int`, *optional*): FFN size of the fusion layers (default: 4x text hidden size).
        itc_weight, itm_weight, mlm_weight (`float`): weights of the 1-to-K ITC, MITM and CMLM losses.
        itc_divide_by_k (`bool`, defaults to False): False = the paper's formula (mean over each image's positives,
            L_t2i averaged over texts); True = the authors' released code (sum over positives and the whole ITC
            divided by K = most captions of one image in the batch, which also scales L_t2i by 1/K).
        gather_across_processes (`bool`, defaults to True): CCRTrainer all-gathers embeddings (with gradients)
            across torch.distributed processes so the ITC loss sees every process's negatives (`forward` itself
            computes the loss of its own batch, like CLIP's).
        mlm_probability (`float`, defaults to 0.15): CMLM masking rate of the training recipe, in [0, 1); 0 means no
            CMLM. `CCRTrainer` masks with it (and writes its `--mlm_probability` here, so config.json records the
            rate that ran); `forward` itself never masks, it reads CMLM inputs from `mlm_input_ids` / `mlm_labels`.
        mask_token_id (`int`, *optional*): id of the tokenizer's mask token, recorded with the model.
        positive_sampling (`str`, defaults to "softmax"): how MITM draws each image's positive caption (the one CMLM
            also reads). "softmax": softmax(-s_ij) over the image's captions (sharply favours the least similar one);
            "ccrk": the authors' code, probability proportional to M - p_ij + 1e-5 with p the image's softmax over all
            texts and M the largest p of the batch (flatter
            for most images; the caption holding M itself is almost never drawn).
        negative_sampling (`str`, defaults to "softmax"): how MITM draws hard negatives (a text per image, an image
            per positive text). "softmax": softmax of the similarities over the negatives only; "ccrk": the authors'
            code, softmax over all candidates including the positives, + 1e-5, positives then set to 0 (flatter).
        mlm_masking (`str`, defaults to "bernoulli"): the CMLM masking rule of `modeling_ccr.masking`. "bernoulli":
            each token with probability `mlm_probability`; "ccrk": the authors' code, exactly
            min(`mlm_max_masks`, max(1, round(`mlm_probability` * n))) tokens of a text of n tokens (specials
            included in n), spans of 2..`mlm_max_span` tokens with probability `mlm_span_probability`.
        mlm_max_masks, mlm_span_probability, mlm_max_span (`int`, `float`, `int`; 12, 0.2, 3): the "ccrk" masking's
            cap, span probability and longest span (the authors' Pretrain.yaml: max_masks, skipgram_prb/_size).
        itm_head_type (`str`, defaults to "linear"): "linear" = one Linear(hidden, 2); "mlp" = the authors' head,
            Linear(hidden, 2 hidden) -> LayerNorm -> GELU -> Linear(2 hidden, 2).
        itm_score (`str`, defaults to "logit_diff"): the re-ranking score of `itm_scores`: "logit_diff" =
            logit(match) - logit(no match) (the log-odds); "positive_logit" = the raw match logit (the authors').
        vision_pooling (`str`, defaults to "auto"): "auto" = the tower's pooler_output when it has one (ViT pooler,
            CLIP post-LN CLS, SigLIP head, Swin average pool), else mean of tokens; "pooler"; "cls"; "mean".
        text_pooling (`str`, defaults to "cls"): "cls" = hidden state of the first token ([CLS] / <s>),
            "pooler" = the tower's pooler_output, "mean" = attention-masked mean.
    """

    model_type = "ccr"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", optional=True),
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type="xlm-roberta", optional=True),
        }
    else:  # pragma: no cover
        sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    projection_dim: int = 256
    tau_init: float = 0.07
    tau_min: float = 0.001
    tau_max: float = 0.5
    num_fusion_layers: int = 0
    fusion_num_attention_heads: int | None = None
    fusion_intermediate_size: int | None = None
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    itc_divide_by_k: bool = False
    gather_across_processes: bool = True
    mlm_probability: float = 0.15
    mask_token_id: int | None = None
    positive_sampling: str = "softmax"
    negative_sampling: str = "softmax"
    mlm_masking: str = "bernoulli"
    mlm_max_masks: int = 12
    mlm_span_probability: float = 0.2
    mlm_max_span: int = 3
    itm_head_type: str = "linear"
    itm_score: str = "logit_diff"
    vision_pooling: str = "auto"
    text_pooling: str = "cls"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # Resolve the towers ourselves (dict -> config, composite CLIP/SigLIP -> its tower) before the base class.
        self.vision_config = _tower_config(_as_config(self.vision_config, "vit", "vision_config"), "vision_config")
        self.text_config = _tower_config(_as_config(self.text_config, "xlm-roberta", "text_config"), "text_config")
        super().__post_init__(**kwargs)
        self._validate_ccr()

    def _validate_ccr(self) -> None:
        if not 0 < self.tau_min <= self.tau_init <= self.tau_max:
            raise ValueError(
                f"need 0 < tau_min <= tau_init <= tau_max, got {self.tau_min}, {self.tau_init}, {self.tau_max}"
            )
        if int(self.projection_dim) < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if int(self.num_fusion_layers) < 0:
            raise ValueError(f"num_fusion_layers must be >= 0, got {self.num_fusion_layers}")
        if not 0.0 <= float(self.mlm_probability) < 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1), got {self.mlm_probability}")
        if self.vision_pooling not in _POOLING_VISION:
            raise ValueError(f"vision_pooling must be one of {_POOLING_VISION}, got {self.vision_pooling!r}")
        if self.text_pooling not in _POOLING_TEXT:
            raise ValueError(f"text_pooling must be one of {_POOLING_TEXT}, got {self.text_pooling!r}")
        for name, allowed in (
            ("positive_sampling", _SAMPLING), ("negative_sampling", _SAMPLING), ("mlm_masking", _MLM_MASKING),
            ("itm_head_type", _ITM_HEADS), ("itm_score", _ITM_SCORES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if int(self.mlm_max_masks) < 1 or int(self.mlm_max_span) < 1:
            raise ValueError(f"mlm_max_masks and mlm_max_span must be >= 1, got {self.mlm_max_masks}, {self.mlm_max_span}")
        if not 0.0 <= float(self.mlm_span_probability) <= 1.0:
            raise ValueError(f"mlm_span_probability must be in [0, 1], got {self.mlm_span_probability}")
        for name in ("itc_weight", "itm_weight", "mlm_weight"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_vision_text_configs(
        cls, vision_config: PretrainedConfig, text_config: PretrainedConfig, **kwargs: Any
    ) -> CCRConfig:
        """Build a CCRConfig from the two towers' configs (like `VisionTextDualEncoderConfig`)."""
        vision_config = _tower_config(vision_config, "vision_config")
        text_config = _tower_config(text_config, "text_config")
        return cls(vision_config=vision_config.to_dict(), text_config=text_config.to_dict(), **kwargs)


CCRConfig.register_for_auto_class("AutoConfig")

__all__ = ["CCRConfig"]

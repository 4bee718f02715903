"""Training recipes: the package's defaults, the authors' code (``ccrk``), and the two stages of their recipe.

A recipe is a set of ``CCRConfig`` fields; a stage is a set of training settings. ``hub_scripts/train.py --recipe
ccrk --stage pretrain|finetune`` applies them (options given explicitly on the command line win). The table of every
difference, with the reasons for the package's defaults: docs/ccrk_differences.md.
"""

from __future__ import annotations

from typing import Any

# The authors' released code (BUAADreamer/CCRK: models/xvlm.py, configs/Pretrain.yaml), one field per behaviour.
CCRK_CONFIG: dict[str, Any] = {
    "positive_sampling": "ccrk",  # p ∝ M - p_ij + 1e-5
    "negative_sampling": "ccrk",  # softmax over all candidates + 1e-5, positives zeroed
    "mlm_masking": "ccrk",  # exactly min(12, round(0.4 n)) tokens, 2-3-token spans with probability 0.2
    "mlm_probability": 0.4,
    "mlm_max_masks": 12,
    "mlm_span_probability": 0.2,
    "mlm_max_span": 3,
    "itm_head_type": "mlp",  # Linear -> LayerNorm -> GELU -> Linear
    "itm_score": "positive_logit",  # re-rank by the raw match logit
    "itc_divide_by_k": True,  # the whole 1-to-K loss divided by K
}
# Set at composition time (not a config field): the CMLM head starts from the text checkpoint's masked-LM head.
CCRK_COMPOSITION: dict[str, Any] = {"mlm_head_from_text_lm": True}

RECIPES: dict[str, dict[str, Any]] = {"package": {}, "ccrk": CCRK_CONFIG}

# The two stages of the authors' recipe. "single" is the package's one-stage training (settings untouched).
STAGES: dict[str, dict[str, Any]] = {
    "single": {},
    # 1-to-K ITC + MITM + CMLM, every language of each image in the batch.
    "pretrain": {"loss_type": "one_to_k", "itm_weight": 1.0, "mlm_weight": 1.0},
    # X-VLM's pairwise soft-label ITC + ITM from the pre-trained model; no 1-to-K, no CMLM; re-ranked evaluation.
    "finetune": {"loss_type": "pairwise_soft", "itm_weight": 1.0, "mlm_weight": 0.0, "rerank_top_k": 16},
}


def recipe_config(recipe: str) -> dict[str, Any]:
    """The ``CCRConfig`` fields of ``recipe`` (a clear error for an unknown name)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[recipe])


# Training arguments that the trainer writes into the config: a config override of them would be overwritten.
TRAINER_OWNED_FIELDS = ("mlm_probability", "itc_divide_by_k")

# Config fields that change how a model trains or scores, not its weights' shapes: the only ones that may change on a
# model loaded from an earlier stage (``--init_from``).
BEHAVIOUR_FIELDS = frozenset(
    {name for name in CCRK_CONFIG if name not in TRAINER_OWNED_FIELDS and name != "itm_head_type"}
    | {"itc_weight", "itm_weight", "mlm_weight"}
)


def parse_config_overrides(overrides: str | None) -> dict[str, Any]:
    """``"positive_sampling=softmax,itm_head_type=linear"`` as typed ``CCRConfig`` fields (transformers'
    ``--config_overrides`` convention of its example scripts); a clear error for an unknown field or value."""
    from .configuration_ccr import CCRConfig

    if not overrides or not overrides.strip():
        return {}
    probe = CCRConfig()
    names = []
    for pair in overrides.split(","):
        name, equals, value = (part.strip() for part in pair.partition("="))
        if not equals or not name or not value:
            raise ValueError(f"--config_overrides: {pair!r} is not name=value (pairs are separated by commas)")
        if name in TRAINER_OWNED_FIELDS:
            raise ValueError(f"--config_overrides: {name} is a training option; give --{name} instead")
        try:
            probe.update_from_string(f"{name}={value}")
        except ValueError as error:
            raise ValueError(f"--config_overrides: {name}={value}: {error}") from None
        names.append(name)
    try:
        probe._validate_ccr()  # the config's own rules for the values
    except ValueError as error:
        raise ValueError(f"--config_overrides: {error}") from None
    return {name: getattr(probe, name) for name in names}


def stage_settings(stage: str) -> dict[str, Any]:
    """The training settings of ``stage`` (a clear error for an unknown name)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return dict(STAGES[stage])


__all__ = [
    "BEHAVIOUR_FIELDS", "CCRK_COMPOSITION", "CCRK_CONFIG", "RECIPES", "STAGES", "TRAINER_OWNED_FIELDS",
    "parse_config_overrides", "recipe_config", "stage_settings",
]

"""Frozen and partly frozen towers (open_clip's ``--lock-image`` / ``--lock-text`` / ``--lock-*-unlocked-groups``).

A frozen tower keeps its (pretrained) weights: its parameters get ``requires_grad=False``, so they receive no
gradient, Trainer builds no optimizer state for them, and the backward pass stops where nothing trainable is left
(a fully frozen tower costs only its forward). ``unfrozen_layers=N`` leaves the last N transformer layers of each
frozen tower trainable, with what follows them (final norm, pooler). The projections, the temperature and the
fusion layers always train. ``save_pretrained`` still writes every weight: the saved folder is complete.
"""

from __future__ import annotations

from torch import nn


def _layer_list(tower: nn.Module) -> nn.ModuleList | None:
    """The tower's stack of layers: its ModuleList holding the most parameters (``encoder.layer`` of ViT / BERT,
    ``encoder.layers`` of CLIP, the stages of Swin)."""
    lists = [module for module in tower.modules() if isinstance(module, nn.ModuleList) and len(module) > 0]
    if not lists:
        return None
    return max(lists, key=lambda module: sum(p.numel() for p in module.parameters()))


def freeze_tower(tower: nn.Module, unfrozen_layers: int = 0) -> int:
    """Freeze ``tower`` except its last ``unfrozen_layers`` layers and what follows them; returns how many
    parameters stay trainable."""
    if unfrozen_layers < 0:
        raise ValueError(f"unfrozen_layers must be >= 0, got {unfrozen_layers}")
    parameters = list(tower.named_parameters())
    for _, parameter in parameters:
        parameter.requires_grad_(False)
    if unfrozen_layers == 0:
        return 0
    layers = _layer_list(tower)
    if layers is None:
        raise ValueError(f"unfrozen_layers={unfrozen_layers}: the tower {type(tower).__name__} has no layer stack")
    if unfrozen_layers > len(layers):
        raise ValueError(f"unfrozen_layers={unfrozen_layers} but the tower {type(tower).__name__} has {len(layers)} layers")
    in_layers = {id(p) for p in layers.parameters()}
    last_layer_position = max(i for i, (_, p) in enumerate(parameters) if id(p) in in_layers)
    trainable = {id(p) for layer in list(layers)[-unfrozen_layers:] for p in layer.parameters()}
    trainable |= {id(p) for _, p in parameters[last_layer_position + 1:]}  # final norm, pooler
    for _, parameter in parameters:
        if id(parameter) in trainable:
            parameter.requires_grad_(True)
    return sum(p.numel() for _, p in parameters if p.requires_grad)


def freeze_towers(model: nn.Module, freeze_vision: bool = False, freeze_text: bool = False, unfrozen_layers: int = 0) -> None:
    """Freeze the vision and/or text tower of a ``CCRModel`` (see module docstring)."""
    if unfrozen_layers and not (freeze_vision or freeze_text):
        raise ValueError("unfrozen_layers applies to a frozen tower: add freeze_vision and/or freeze_text")
    if freeze_vision:
        freeze_tower(model.vision_model, unfrozen_layers)
    if freeze_text:
        freeze_tower(model.text_model, unfrozen_layers)


__all__ = ["freeze_tower", "freeze_towers"]

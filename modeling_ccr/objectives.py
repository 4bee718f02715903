"""The contrastive objectives (ITC): 1-to-K and the three baselines of the paper, with their gathering across processes.

Every objective has one signature::

    loss(image_embeds (B, D), text_embeds (T, D), text_image_ids (T,), text_language_ids (T,), temperature,
         *, pivot_language_id, divide_by_k) -> scalar

on L2-normalised embeddings, and is built on the one implementation of the contrastive loss,
:func:`one_to_k_contrastive_loss` (defined in the remote-code ``modeling_ccr.py``, which needs it for the model's
local loss; with one text per image it *is* the CLIP loss). :data:`OBJECTIVES` is the registry;
:func:`contrastive_objective` the one dispatch (one all-gather, then the named loss) that ``CCRTrainer`` calls once
per step; ``hub_scripts/train.py --loss_type`` and ``hub_scripts/compare_objectives.py`` list what it holds.

- ``one_to_k``: every image against all texts in all languages at once (the paper's method).
- ``one_to_one``: one caption per image, in a language drawn at random each step (cross-modal style).
- ``per_language``: a separate CLIP loss per language, averaged (cross-modal style, one language per loss).
- ``pivot``: CLIP between images and English captions, plus a text-to-text contrastive loss that pulls
  every other language onto the English caption of the same image (cross-lingual style).
- ``pairwise_soft``: the fine-tuning ITC of the authors' code (X-VLM's): one (image, caption) pair per image, the
  caption in a language drawn each step (their fine-tuning data is one pair per sample), and a pairwise softmax
  whose targets are spread evenly over every pair of the same image (soft labels).

Adding an objective: docs/adding_an_objective.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .modeling_ccr import one_to_k_contrastive_loss, one_to_k_loss_from_logits

PIVOT_LANGUAGE = "en"


# --------------------------------------------------------------------------------------------------------------------
# All-gather with gradients: the objectives see the negatives of every process.
# --------------------------------------------------------------------------------------------------------------------


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient of every process and returns this rank's slice.

    Works on every backend (gloo, nccl) since it only needs all_gather and all_reduce.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        ctx.rank = dist.get_rank(group=group)
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group=group))]
        dist.all_gather(out, tensor, group=group)
        return torch.stack(out)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        import torch.distributed as dist

        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.rank], None


def _distributed_world_size(group: Any = None) -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group=group)


def gather_for_contrastive(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_image_ids: torch.Tensor,
    *text_extras: torch.Tensor,
    group: Any = None,
) -> tuple[torch.Tensor, ...]:
    """Gather image/text embeddings of all processes, with gradients, for a loss over the global batch.

    Each process may hold a different number of images and texts: both are padded to the largest count, gathered,
    and the padding rows are dropped again with the gathered sizes (the mask). `text_image_ids` are offset to
    global image indices (process r's images come after those of processes 0..r-1). Every process then computes
    the loss of the global batch, like open_clip's `gather_with_grad=True, local_loss=False`: the backward sums each
    process's gradient into the owner's slice, so with DDP's gradient averaging the update is that of one big batch.

    `text_extras` are further per-text integer tensors (T,), e.g. language ids, gathered alongside (no gradient).
    Returns `(images, texts, text_image_ids, *text_extras)`, the inputs unchanged when torch.distributed is not
    initialised or has one process.
    """
    if _distributed_world_size(group) <= 1:
        return (image_embeds, text_embeds, text_image_ids, *text_extras)
    import torch.distributed as dist

    world = dist.get_world_size(group=group)
    device = image_embeds.device
    n_img, n_txt = image_embeds.shape[0], text_embeds.shape[0]
    sizes = torch.tensor([n_img, n_txt], dtype=torch.long, device=device)
    all_sizes = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes, group=group)
    all_sizes = torch.stack(all_sizes).tolist()
    max_img = max(s[0] for s in all_sizes)
    max_txt = max(s[1] for s in all_sizes)

    img_pad = F.pad(image_embeds, (0, 0, 0, max_img - n_img))
    txt_pad = F.pad(text_embeds, (0, 0, 0, max_txt - n_txt))
    all_img = _AllGatherWithGrad.apply(img_pad, group)  # (W, max_img, D)
    all_txt = _AllGatherWithGrad.apply(txt_pad, group)  # (W, max_txt, D)
    per_text = []
    for values in (text_image_ids, *text_extras):
        padded = F.pad(values.long(), (0, max_txt - n_txt), value=-1)
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded, group=group)
        per_text.append(torch.stack(gathered))

    rows = torch.arange(max(max_img, max_txt), device=device)
    img_mask = torch.stack([rows[:max_img] < s[0] for s in all_sizes])  # (W, max_img) True = real row
    txt_mask = torch.stack([rows[:max_txt] < s[1] for s in all_sizes])
    offsets = torch.tensor([0] + [s[0] for s in all_sizes[:-1]], device=device).cumsum(0)
    ids = per_text[0] + offsets[:, None]
    return (all_img[img_mask], all_txt[txt_mask], ids[txt_mask], *(extra[txt_mask] for extra in per_text[1:]))


# --------------------------------------------------------------------------------------------------------------------
# The objectives, one signature.
# --------------------------------------------------------------------------------------------------------------------


def _local_ids(selected: torch.Tensor, size: int) -> torch.Tensor:
    """Map from global index (0..size-1) to position in ``selected``; -1 for indices not selected."""
    remap = torch.full((size,), -1, dtype=torch.long, device=selected.device)
    remap[selected] = torch.arange(len(selected), device=selected.device)
    return remap


def _subset_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_image_ids: torch.Tensor,
    keep: torch.Tensor,
    temperature: torch.Tensor,
) -> torch.Tensor:
    """Contrastive loss over the kept texts and the images they describe (images without one drop out)."""
    images = torch.unique(text_image_ids[keep])
    remap = _local_ids(images, image_embeds.shape[0])
    return one_to_k_contrastive_loss(
        image_embeds[images], text_embeds[keep], remap[text_image_ids[keep]], temperature
    )


def one_to_k_loss(
    image_embeds, text_embeds, text_image_ids, text_language_ids, temperature, *, pivot_language_id=None,
    divide_by_k=False,
) -> torch.Tensor:
    """The paper's 1-to-K loss (``divide_by_k``: the authors' code normalisation)."""
    return one_to_k_contrastive_loss(image_embeds, text_embeds, text_image_ids, temperature, divide_by_k=divide_by_k)


def _one_caption_per_image(text_image_ids: torch.Tensor, num_images: int) -> torch.Tensor:
    """Mask (T,) keeping one caption per image, drawn uniformly among that image's captions this step."""
    scores = torch.rand(text_image_ids.shape, device=text_image_ids.device)
    best = torch.full((num_images,), -1.0, device=scores.device).scatter_reduce(
        0, text_image_ids, scores, reduce="amax"
    )
    return scores == best[text_image_ids]


def one_to_one_loss(
    image_embeds, text_embeds, text_image_ids, text_language_ids, temperature, *, pivot_language_id=None,
    divide_by_k=False,
) -> torch.Tensor:
    """CLIP loss on one caption per image, drawn uniformly among that image's captions this step."""
    keep = _one_caption_per_image(text_image_ids, image_embeds.shape[0])
    return _subset_loss(image_embeds, text_embeds, text_image_ids, keep, temperature)


def pairwise_soft_label_loss(
    pair_image_embeds: torch.Tensor, pair_text_embeds: torch.Tensor, pair_ids: torch.Tensor, temperature
) -> torch.Tensor:
    """X-VLM's ITC over P (image, text) pairs with soft labels: pairs sharing an id are each other's positives.

    With ``s = v_a . t_b / tau`` (P, P) and ``y_ab = [id_a == id_b] / #{b' : id_b' == id_a}``:
    ``L = (mean_a [-sum_b y_ab log softmax_b(s_a.)_b] + mean_b [-sum_a y_ba log softmax_a(s_.b)_a]) / 2``.
    With distinct ids it is the CLIP loss.
    """
    logits = pair_image_embeds @ pair_text_embeds.t() / temperature
    same = (pair_ids[:, None] == pair_ids[None, :]).to(logits.dtype)
    labels = same / same.sum(dim=1, keepdim=True)
    loss_i2t = -(logits.log_softmax(dim=1) * labels).sum(dim=1).mean()
    loss_t2i = -(logits.t().log_softmax(dim=1) * labels).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def pairwise_soft_loss(
    image_embeds, text_embeds, text_image_ids, text_language_ids, temperature, *, pivot_language_id=None,
    divide_by_k=False,
) -> torch.Tensor:
    """The authors' fine-tuning ITC: one caption per image (language drawn this step), soft-label pairwise loss."""
    keep = _one_caption_per_image(text_image_ids, image_embeds.shape[0])
    ids = text_image_ids[keep]
    return pairwise_soft_label_loss(image_embeds[ids], text_embeds[keep], ids, temperature)


def per_language_loss(
    image_embeds, text_embeds, text_image_ids, text_language_ids, temperature, *, pivot_language_id=None,
    divide_by_k=False,
) -> torch.Tensor:
    """Mean over the batch's languages of a CLIP loss restricted to that language's captions."""
    losses = [
        _subset_loss(image_embeds, text_embeds, text_image_ids, text_language_ids == language, temperature)
        for language in torch.unique(text_language_ids)
    ]
    return torch.stack(losses).mean()


def _missing_language(loss_type: str, detail: str) -> ValueError:
    """The one error for data without the language an objective needs ("pivot needs English")."""
    code = OBJECTIVES[loss_type].needs_language
    name = "English ('en')" if code == "en" else repr(code)
    return ValueError(f"the {loss_type} objective needs {name} captions: {detail}")


def pivot_loss(
    image_embeds, text_embeds, text_image_ids, text_language_ids, temperature, *, pivot_language_id=None,
    divide_by_k=False,
) -> torch.Tensor:
    """CLIP(image, English) + InfoNCE(other language -> English caption of the same image), averaged."""
    if pivot_language_id is None:
        raise _missing_language("pivot", "no language id was given for it")
    is_pivot = text_language_ids == pivot_language_id
    num_images = image_embeds.shape[0]
    has_pivot = torch.zeros(num_images, dtype=torch.bool, device=is_pivot.device)
    has_pivot[text_image_ids[is_pivot]] = True
    if not bool(has_pivot[text_image_ids].all()):
        raise _missing_language("pivot", "an English caption for every image of the batch")
    image_text = _subset_loss(image_embeds, text_embeds, text_image_ids, is_pivot, temperature)
    others = ~is_pivot
    if not bool(others.any()):
        return image_text
    # One English caption per image stands as that image's pivot (the first one in the batch).
    pivot_rows = torch.full((num_images,), -1, dtype=torch.long, device=is_pivot.device)
    pivot_positions = torch.nonzero(is_pivot).squeeze(1)
    pivot_rows.scatter_reduce_(0, text_image_ids[pivot_positions], pivot_positions, reduce="amin", include_self=False)
    images = torch.nonzero(pivot_rows >= 0).squeeze(1)
    remap = _local_ids(images, num_images)
    # Text-to-text: the English captions play the role of the images of the 1-to-K loss.
    text_text = one_to_k_contrastive_loss(
        text_embeds[pivot_rows[images]], text_embeds[others], remap[text_image_ids[others]], temperature
    )
    return (image_text + text_text) / 2


# --------------------------------------------------------------------------------------------------------------------
# The registry and the one dispatch.
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """A registered objective: its loss (the signature above), one line for ``--help``, and the language every
    batch must hold (None: any languages)."""

    loss: Callable[..., torch.Tensor]
    summary: str
    needs_language: str | None = None


OBJECTIVES: dict[str, Objective] = {
    "one_to_k": Objective(one_to_k_loss, "every image against all texts in all languages at once (the paper's method)"),
    "one_to_one": Objective(one_to_one_loss, "CLIP loss on one caption per image in a language drawn each step"),
    "per_language": Objective(per_language_loss, "one CLIP loss per language, averaged"),
    "pivot": Objective(
        pivot_loss, "CLIP on image-English plus text-text from every other language to English", PIVOT_LANGUAGE
    ),
    "pairwise_soft": Objective(
        pairwise_soft_loss, "the authors' fine-tuning ITC: one pair per image, X-VLM's soft labels over same-image pairs"
    ),
}
LOSS_TYPES = tuple(OBJECTIVES)


def objectives_help() -> str:
    """One sentence per objective, for command-line help."""
    return "; ".join(f"{name}: {objective.summary}" for name, objective in OBJECTIVES.items())


def check_objective(loss_type: str, languages: Sequence[str] | None = None, coverage: str = "full") -> None:
    """Raise a clear error when ``loss_type`` is unknown or the data's ``languages`` lack the one it needs
    (with ``coverage`` other than full some images lack it, and every image of a batch needs it)."""
    if loss_type not in OBJECTIVES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    needed = OBJECTIVES[loss_type].needs_language
    if languages is not None and needed is not None and needed not in languages:
        raise _missing_language(loss_type, f"the data has {list(languages)}")
    if needed is not None and coverage != "full":
        raise _missing_language(loss_type, f"every image needs one, and --language_coverage {coverage} leaves "
                                           "some images without it")


def pivot_language_id(languages: Sequence[str]) -> int | None:
    """Index of the pivot language in ``languages`` (what ``text_language_ids`` count in), None without it."""
    return list(languages).index(PIVOT_LANGUAGE) if PIVOT_LANGUAGE in languages else None


def contrastive_objective(
    loss_type: str,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    text_image_ids: torch.Tensor,
    text_language_ids: torch.Tensor,
    temperature: torch.Tensor,
    pivot_language_id: int | None = None,
    divide_by_k: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """The ITC loss named by ``loss_type`` (one of :data:`LOSS_TYPES`) over the batch of every process.

    ``gather``: all-gather the embeddings (with gradients) and per-text ids of all torch.distributed processes
    first (:func:`gather_for_contrastive`, nothing to do on one process).
    """
    check_objective(loss_type)
    if gather:
        image_embeds, text_embeds, text_image_ids, text_language_ids = gather_for_contrastive(
            image_embeds, text_embeds, text_image_ids, text_language_ids
        )
    return OBJECTIVES[loss_type].loss(
        image_embeds, text_embeds, text_image_ids, text_language_ids, temperature,
        pivot_language_id=pivot_language_id, divide_by_k=divide_by_k,
    )


__all__ = [
    "LOSS_TYPES",
    "OBJECTIVES",
    "PIVOT_LANGUAGE",
    "Objective",
    "check_objective",
    "contrastive_objective",
    "gather_for_contrastive",
    "objectives_help",
    "one_to_k_contrastive_loss",
    "one_to_k_loss_from_logits",
    "pairwise_soft_label_loss",
    "pivot_language_id",
]

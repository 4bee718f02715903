"""CCRProcessor: images and multilingual caption groups -> model inputs (remote code: torch/transformers only)."""

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin, ViTImageProcessorPil

_DEFAULT_MAX_LENGTH = 512
_MODALITY_OWNERS = {"text_kwargs": "tokenizer", "images_kwargs": "image_processor"}


# How pixel values of each type are read (one rule per type, like `do_rescale` in transformers' image processors;
# nothing is stretched by an image's own maximum, and what is ambiguous is refused):
#   uint8 (and PIL "L", "RGB", ...) ........ 0..255 as is
#   bool ...................................... False/True -> 0/255
#   uint16 (and PIL "I;16*") ................. full 16-bit range 0..65535, scaled by 255/65535
#   other integers (int8..int64, uint32, PIL "I") values must lie in 0..255 (8-bit values in a wider type)
#   floats (float16/32/64, PIL "F") ........... values must lie in [0, 1] (scaled by 255); a rounding overshoot
#                                               of at most half an 8-bit step is clipped
FLOAT_TOLERANCE = 0.5 / 255.0


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Pixel values of any supported dtype -> uint8 by the table above, or a ValueError naming the problem."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.size == 0:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{where}: pixel values hold NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
            raise ValueError(
                f"{where}: float pixel values must lie in [0, 1], got [{low:.4g}, {high:.4g}] (for 0..255 values "
                "divide by 255 or pass uint8; for [-1, 1] values map them with (x + 1) / 2)"
            )
        return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.dtype == np.uint16:
        return (array.astype(np.float64) * (255.0 / 65535.0)).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{where}: {array.dtype} pixel values must lie in 0..255 (8-bit values), got {low}..{high} "
                "(16-bit images: pass uint16, which is read over its full range)"
            )
        return array.astype(np.uint8)
    raise TypeError(f"{where}: unsupported pixel dtype {array.dtype}")


def _to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels (RGBA, LA, P with transparency) become white, not black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16"):  # 16-bit grey, read over its full range
        array = np.asarray(image).astype(np.uint16)
        return Image.fromarray(_to_uint8(array, where)).convert("RGB")
    if image.mode in ("I", "F"):  # 32-bit int / float grey: the integer and float rules of the table
        return Image.fromarray(_to_uint8(np.asarray(image), where)).convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray, index: int, channels_first: bool = False) -> Image.Image:
    """(H, W), (H, W, C) or (C, H, W) with C in 1/3/4, pixel values read by the table above. A shape that reads
    both ways ((3, 4, 4)) is channels-last for numpy (PIL's layout) and channels-first for torch tensors."""
    leading = array.ndim == 3 and array.shape[0] in (1, 3, 4)
    if leading and (channels_first or array.shape[-1] not in (1, 3, 4)):
        array = np.moveaxis(array, 0, -1)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ValueError(
            f"image {index}: array of shape {array.shape} is not an image (want (H, W), (H, W, C) or (C, H, W), "
            "C in 1/3/4)"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image {index}: zero-size image (array shape {array.shape})")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.number)) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"image {index}: unsupported array dtype {array.dtype}")
    array = _to_uint8(array, f"image {index}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _open_bytes(data: bytes, index: int, what: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises several types for corrupt data
        raise ValueError(f"image {index}: cannot decode {what} ({type(err).__name__}: {err})") from err
    return image


def load_image(image: Any, index: int = 0) -> Image.Image:
    """One image of any supported kind -> an RGB PIL image, or a ValueError/TypeError naming the problem.

    Supported: PIL images (any mode: RGB, L, RGBA, P, CMYK, I;16...), numpy arrays, torch tensors, encoded bytes,
    file paths and `datasets` Image dicts ({"bytes": ..., "path": ...}).
    """
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        if image.get("bytes") is not None:
            image = image["bytes"]
        elif image.get("path"):
            image = image["path"]
        else:
            raise ValueError(f"image {index}: image dict holds neither bytes nor a path")
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise ValueError(f"image {index}: empty image bytes")
        image = _open_bytes(bytes(image), index, "image bytes (corrupt or unsupported format)")
    elif isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ValueError(f"image {index}: no image file at {path!r}")
        with open(path, "rb") as handle:
            image = _open_bytes(handle.read(), index, f"image file {path!r}")
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        image = _array_to_pil((tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy(), index, True)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image, index)
    elif image is None:
        raise ValueError(f"image {index} is None")
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"image {index}: unsupported type {type(image).__name__} (use PIL.Image, numpy array, torch tensor, "
            "bytes or a file path)"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image {index}: zero-size image ({image.width}x{image.height})")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"image {index}: cannot decode image ({type(err).__name__}: {err})") from err
    return _to_rgb(image, f"image {index}")


def _caption_text(caption: Any, image_index: int, caption_index: int) -> tuple[str, str | None]:
    where = f"caption {caption_index} of image {image_index}"
    language = None
    if isinstance(caption, dict):
        if "text" not in caption:
            raise ValueError(f"{where}: caption dict has no 'text' key (want {{'language': ..., 'text': ...}})")
        language = caption.get("language")
        caption = caption["text"]
    if caption is None:
        raise ValueError(f"{where} is None")
    if not isinstance(caption, str):
        raise TypeError(f"{where}: expected a string, got {type(caption).__name__}")
    if not caption.strip():
        raise ValueError(f"{where} is an empty string")
    return caption, language


def flatten_captions(captions: Sequence[Sequence[Any]]) -> tuple[list[str], list[int], list[str | None]]:
    """Caption groups (one group per image; str or {"language", "text"} items) -> texts, image ids, languages."""
    if isinstance(captions, (str, bytes)) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of caption lists (one per image), got {type(captions).__name__}")
    texts: list[str] = []
    image_ids: list[int] = []
    languages: list[str | None] = []
    for i, group in enumerate(captions):
        if group is None:
            raise ValueError(f"caption list of image {i} is None")
        if isinstance(group, (str, dict)) or not isinstance(group, Sequence):
            raise TypeError(
                f"captions of image {i} must be a list of captions (str or {{'language', 'text'}}), "
                f"got {type(group).__name__}"
            )
        if len(group) == 0:
            raise ValueError(f"image {i} has an empty caption list")
        for j, caption in enumerate(group):
            text, language = _caption_text(caption, i, j)
            texts.append(text)
            image_ids.append(i)
            languages.append(language)
    return texts, image_ids, languages


class CCRProcessor(ProcessorMixin):
    r"""Image processor + tokenizer for [`CCRModel`].

    - `processor(text=[...])` -> `input_ids`, `attention_mask` (queries).
    - `processor(images=[...])` -> `pixel_values`.
    - `processor(images=[...], captions=[[...], ...])` -> `pixel_values`, `input_ids`, `attention_mask`,
      `text_image_ids` (T,) long: one caption group per image (one caption per language, any number of
      languages; items are str or {"language", "text"}), flattened in order.

    Images: PIL in any mode (converted to RGB, transparency onto white), numpy arrays, tensors, encoded bytes,
    paths. Texts are padded to the longest and truncated to `max_length` (default: the tokenizer's
    `model_max_length`, at most 512). The default image processor is the PIL-backed `ViTImageProcessorPil`
    (no torchvision needed, no backend warning).
    """

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, max_length: int | None = None, **kwargs):
        if image_processor is None:
            image_processor = ViTImageProcessorPil()
        if tokenizer is None:
            raise ValueError("CCRProcessor needs a tokenizer")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    # Lowest-priority defaults of `ProcessorMixin._merge_kwargs` (any call argument overrides them).
    text_kwargs = {"padding": True, "truncation": True, "return_token_type_ids": False, "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "text_image_ids"]

    def _effective_max_length(self, max_length: int | None) -> int:
        if max_length is not None:
            return int(max_length)
        if self.max_length is not None:
            return int(self.max_length)
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max <= 100_000:
            return min(model_max, _DEFAULT_MAX_LENGTH)
        return _DEFAULT_MAX_LENGTH

    def _known_kwargs(self) -> set[str]:
        """Every keyword `ProcessorMixin._merge_kwargs` routes somewhere: flat processor kwargs, the per-modality
        dicts (`text_kwargs`, ...), `common_kwargs`, and each modality's own arguments (the tokenizer's, the image
        processor's)."""
        typed = self.valid_processor_kwargs.__annotations__
        known = set(typed) | {"common_kwargs"}
        for name, owner in _MODALITY_OWNERS.items():
            known |= set(getattr(typed.get(name), "__annotations__", {}))
            valid = getattr(getattr(self, owner, None), "valid_kwargs", None)
            known |= set(getattr(valid, "__annotations__", {}))
        return known

    def _merged_kwargs(self, kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """CLIPProcessor's keyword conventions: flat kwargs go to the tokenizer / image processor that accepts them,
        `text_kwargs=` / `images_kwargs=` / `common_kwargs=` dicts too; unknown names are an error (transformers
        would only warn and drop them)."""
        unknown = sorted(set(kwargs) - self._known_kwargs())
        if unknown:
            raise TypeError(f"CCRProcessor got unexpected arguments: {unknown}")
        merged = self._merge_kwargs(tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs)
        if merged["text_kwargs"].get("max_length") is None:
            merged["text_kwargs"]["max_length"] = self._effective_max_length(None)
        return merged

    def _tokenize(self, texts: list[str], text_kwargs: dict[str, Any]) -> dict[str, Any]:
        return dict(self.tokenizer(texts, **text_kwargs))

    def process_images(self, images: Any, return_tensors: str | None = "pt", **images_kwargs: Any) -> dict[str, Any]:
        """Images -> {"pixel_values": (B, C, H, W)} through the image processor, after validation/RGB conversion."""
        if isinstance(images, (Image.Image, np.ndarray, torch.Tensor, bytes, bytearray, str, os.PathLike, dict)):
            if isinstance(images, np.ndarray) and images.ndim == 4 or isinstance(images, torch.Tensor) and images.dim() == 4:
                images = list(images)
            else:
                images = [images]
        if not isinstance(images, Sequence):
            raise TypeError(f"images must be an image or a list of images, got {type(images).__name__}")
        if len(images) == 0:
            raise ValueError("images is an empty list")
        pil_images = [load_image(image, i) for i, image in enumerate(images)]
        out = self.image_processor(images=pil_images, return_tensors=return_tensors, **images_kwargs)
        return {"pixel_values": out["pixel_values"]}

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        captions: Sequence[Sequence[Any]] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        r"""Texts and/or images -> model inputs, with `CLIPProcessor`'s keyword arguments.

        Tokenizer arguments (`padding` True/"longest"/"max_length"/False, `truncation`, `max_length`,
        `return_attention_mask`, `return_token_type_ids`, ...) reach the tokenizer, image-processor arguments
        (`size`, `do_resize`, ...) the image processor, `return_tensors` ("pt", "np" or None) both; the per-modality
        dicts `text_kwargs=` / `images_kwargs=` / `common_kwargs=` work too. Defaults: pad to the longest text,
        truncate to `max_length`, no token_type_ids, PyTorch tensors.
        """
        if images is None and text is None and captions is None:
            raise ValueError("give images, text and/or captions")
        if text is not None and captions is not None:
            raise ValueError("give either text (queries) or captions (caption groups per image), not both")
        merged = self._merged_kwargs(kwargs)
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.process_images(images, **merged["images_kwargs"]))
        return_tensors = merged["text_kwargs"].get("return_tensors")
        if captions is not None:
            texts, image_ids, _ = flatten_captions(captions)
            if images is not None:
                n_images = len(data["pixel_values"])
                if n_images != len(captions):
                    raise ValueError(
                        f"got {n_images} images but {len(captions)} caption groups: give one caption list per image"
                    )
            data.update(self._tokenize(texts, merged["text_kwargs"]))
            data["text_image_ids"] = (
                torch.tensor(image_ids, dtype=torch.long)
                if return_tensors == "pt"
                else np.asarray(image_ids, dtype=np.int64) if return_tensors == "np" else image_ids
            )
        elif text is not None:
            if isinstance(text, str):
                text = [text]
            if not isinstance(text, Sequence) or len(text) == 0:
                raise ValueError("text must be a non-empty string or list of strings")
            checked = [_caption_text(t, 0, j)[0] for j, t in enumerate(text)]
            data.update(self._tokenize(checked, merged["text_kwargs"]))
        return BatchFeature(data=data)

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)


CCRProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["CCRProcessor", "flatten_captions", "load_image"]

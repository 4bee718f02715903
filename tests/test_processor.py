"""CCRProcessor: image kinds and modes, caption groups -> input_ids + text_image_ids, clear errors."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from conftest import IMAGE_SIZE, make_processor
from PIL import Image


@pytest.fixture(scope="module")
def processor():
    return make_processor()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _images_in_all_modes() -> list:
    rgb = Image.new("RGB", (20, 14), (200, 30, 60))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    rgba = Image.new("RGBA", (18, 18), (10, 200, 10, 128))
    return [
        rgb,
        rgb.convert("L"),
        rgba,
        palette,
        rgb.convert("CMYK"),
        np.full((12, 16, 3), 120, dtype=np.uint8),  # HWC uint8
        np.random.default_rng(0).random((10, 9)),  # grey float in [0, 1]
        np.zeros((3, 11, 13), dtype=np.uint8),  # CHW
        torch.rand(3, 8, 8),
        _png_bytes(rgb),
        {"bytes": _png_bytes(rgba), "path": None},  # a `datasets` Image value
    ]


def test_all_image_kinds_and_modes(processor):
    images = _images_in_all_modes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no backend / torchvision warnings
        out = processor(images=images)
    assert set(out) == {"pixel_values"}
    assert out["pixel_values"].shape == (len(images), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out["pixel_values"].dtype == torch.float32
    assert torch.isfinite(out["pixel_values"]).all()


def test_modes_give_the_same_colour():
    processor = make_processor()
    rgb = Image.new("RGB", (8, 8), (200, 30, 60))
    cmyk = rgb.convert("CMYK")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    grey = Image.new("L", (8, 8), 77)
    pixels = processor(images=[rgb, cmyk, palette, grey, Image.new("RGB", (8, 8), (77, 77, 77))])["pixel_values"]
    torch.testing.assert_close(pixels[1], pixels[0], atol=0.05, rtol=0)
    torch.testing.assert_close(pixels[2], pixels[0], atol=0.05, rtol=0)
    torch.testing.assert_close(pixels[3], pixels[4])
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent -> white background
    white = processor(images=[transparent, Image.new("RGB", (8, 8), (255, 255, 255))])["pixel_values"]
    torch.testing.assert_close(white[0], white[1])


def test_caption_groups_become_input_ids_and_text_image_ids(processor):
    images = [Image.new("RGB", (16, 16), (i * 50, 0, 0)) for i in range(3)]
    captions = [
        ["a red apple on a table", "ein roter Apfel auf einem Tisch", "桌子上的红苹果"],
        [{"language": "fr", "text": "un chien court dans le parc"}],
        [{"language": "en", "text": "a dog runs in the park"}, {"language": "ja", "text": "公園を走る犬"}],
    ]
    out = processor(images=images, captions=captions)
    assert set(out) == {"pixel_values", "input_ids", "attention_mask", "text_image_ids"}
    assert out["text_image_ids"].tolist() == [0, 0, 0, 1, 2, 2]
    assert out["text_image_ids"].dtype == torch.long
    assert out["input_ids"].shape[0] == 6 and out["attention_mask"].shape == out["input_ids"].shape
    tokenizer = processor.tokenizer
    assert (out["input_ids"][:, 0] == tokenizer.cls_token_id).all()
    assert tokenizer.unk_token_id not in out["input_ids"][out["attention_mask"].bool()].tolist()
    expected = tokenizer("un chien court dans le parc")["input_ids"]
    assert out["input_ids"][3, : len(expected)].tolist() == expected


def test_queries_and_truncation():
    processor = make_processor(max_length=6)
    long_text = " ".join(["a red apple on a table"] * 20)
    out = processor(text=["a dog", long_text])
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == (2, 6)
    assert out["input_ids"][1, -1] == processor.tokenizer.sep_token_id
    unlimited = make_processor()  # falls back to the tokenizer's model_max_length (24)
    assert unlimited(text=long_text)["input_ids"].shape == (1, 24)
    assert processor(text=["a dog"], max_length=4)["input_ids"].shape[1] <= 4


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"captions": [["a dog"], []]}, ValueError, "image 1 has an empty caption list"),
        ({"captions": [["a dog", None]]}, ValueError, "caption 1 of image 0 is None"),
        ({"captions": [["a dog", 3]]}, TypeError, "caption 1 of image 0: expected a string"),
        ({"captions": [[{"language": "en"}]]}, ValueError, "no 'text' key"),
        ({"captions": [["  "]]}, ValueError, "empty string"),
        ({"captions": ["a dog"]}, TypeError, "captions of image 0 must be a list"),
        ({"images": [Image.new("RGB", (0, 5))]}, ValueError, "image 0: zero-size image"),
        ({"images": [np.zeros((0, 4, 3), dtype=np.uint8)]}, ValueError, "zero-size image"),
        ({"images": [b"\x89PNG\r\n\x1a\nnot really a png"]}, ValueError, "image 0: cannot decode"),
        ({"images": [b""]}, ValueError, "empty image bytes"),
        ({"images": [Image.new("RGB", (4, 4)), 42]}, TypeError, "image 1: unsupported type int"),
        ({"images": [np.zeros((5, 5, 7))]}, ValueError, "not an image"),
        ({"images": [None]}, ValueError, "image 0 is None"),
        ({"images": []}, ValueError, "empty list"),
        ({"images": [Image.new("RGB", (4, 4))] * 2, "captions": [["a dog"]]}, ValueError, "2 images but 1 caption"),
        ({"text": ["a dog"], "captions": [["a dog"]]}, ValueError, "not both"),
        ({}, ValueError, "give images"),
        ({"text": ["a dog"], "paddin": "max_length"}, TypeError, r"unexpected arguments: \['paddin'\]"),
        ({"images": [Image.new("RGB", (4, 4))], "colour": 1, "zoom": 2}, TypeError, r"\['colour', 'zoom'\]"),
    ],
)
def test_bad_input_raises_a_clear_error(processor, kwargs, error, match):
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_truncated_image_file_is_reported(processor, tmp_path):
    data = _png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"))
    with pytest.raises(ValueError, match="image 0: cannot decode"):
        processor(images=[data[: len(data) // 2]])
    path = tmp_path / "broken.png"
    path.write_bytes(data[:100])
    with pytest.raises(ValueError, match="broken.png"):
        processor(images=[str(path)])


def test_processor_round_trip(tmp_path):
    from transformers import AutoProcessor

    processor = make_processor(max_length=10)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "CCRProcessor"
    assert type(loaded.image_processor).__name__ == "ViTImageProcessorPil"
    assert loaded.max_length == 10
    images = _images_in_all_modes()[:4]
    captions = [["a dog"], ["un chien", "ein Hund"], ["公園"], ["visage"]]
    a, b = processor(images=images, captions=captions), loaded(images=images, captions=captions)
    for key in a:
        assert torch.equal(a[key], b[key]), key


CLIP_CALLS = [
    {"return_tensors": "pt", "padding": True, "truncation": True},
    {"return_tensors": "pt", "padding": "longest"},
    {"return_tensors": "np", "padding": "max_length", "max_length": 10, "truncation": True},
    {"return_tensors": "pt", "padding": True, "truncation": True, "max_length": 5},
    {"return_tensors": "pt", "padding": True, "return_attention_mask": False},
    {"return_tensors": None, "padding": False},
    {"return_tensors": "pt", "text_kwargs": {"padding": "max_length", "max_length": 8, "truncation": True}, "common_kwargs": {}},
]


@pytest.mark.parametrize("kwargs", CLIP_CALLS)
def test_clip_processor_keyword_conventions(kwargs):
    """Same call to transformers' CLIPProcessor and to CCRProcessor (same tokenizer and image processor)."""
    from conftest import make_tokenizer
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    from modeling_ccr import CCRProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    clip = CLIPProcessor(image_processor=image_processor, tokenizer=make_tokenizer())
    ccr = CCRProcessor(image_processor=image_processor, tokenizer=make_tokenizer())
    images = [Image.new("RGB", (40, 36), (200, 30, 60)), Image.new("RGB", (30, 50), (20, 130, 60))]
    text = ["roter Apfel", "红苹果", " ".join(["a dog runs in the park"] * 3)]
    want, got = clip(text=text, images=images, **kwargs), ccr(text=text, images=images, **kwargs)
    assert set(got) == set(want)
    for key in want:
        if kwargs["return_tensors"] is None:
            assert type(got[key]) is type(want[key]) and len(got[key]) == len(want[key])
            if key != "pixel_values":
                assert got[key] == want[key], key
            continue
        assert type(got[key]) is type(want[key]) and got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)


def test_tokenizer_and_image_arguments_reach_their_processor(processor):
    out = processor(text=["a dog"], images=[Image.new("RGB", (20, 20))], size={"height": 16, "width": 16},
                    return_token_type_ids=True)
    assert out["pixel_values"].shape == (1, 3, 16, 16)
    assert "token_type_ids" in out

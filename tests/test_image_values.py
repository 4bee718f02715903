"""How the processor reads pixel values of every dtype and mode: one documented rule per type, no stretching
by an image's own maximum, a clear error for what is ambiguous (property-based, with hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from modeling_ccr.processing_ccr import load_image

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


def _grey(image: Image.Image) -> np.ndarray:
    rgb = np.asarray(image)
    assert rgb.ndim == 3 and rgb.shape[-1] == 3 and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0]


@SETTINGS
@given(arrays(np.uint8, shapes))
def test_uint8_is_taken_as_is(array):
    assert np.array_equal(_grey(load_image(array)), array)


@SETTINGS
@given(arrays(np.float32, shapes, elements=st.floats(0.0, 1.0, width=32)))
def test_floats_in_unit_range_are_scaled_by_255(array):
    expected = np.round(array.astype(np.float64) * 255.0).astype(np.uint8)
    assert np.abs(_grey(load_image(array)).astype(int) - expected.astype(int)).max() <= 1


@SETTINGS
@given(arrays(np.float64, shapes, elements=st.floats(0.0, 1.0)), st.floats(1.01, 255.0))
def test_floats_above_one_are_refused_not_darkened(array, peak):
    array = array.copy()
    array.flat[0] = peak  # one value clearly above 1: [0, 255] floats, or a bad normalisation
    with pytest.raises(ValueError, match=r"image 0: float pixel values must lie in \[0, 1\]"):
        load_image(array)


@SETTINGS
@given(arrays(np.float64, shapes, elements=st.floats(-1.0, 1.0)), st.floats(-1.0, -0.01))
def test_negative_floats_are_refused_not_clipped(array, low):
    array = array.copy()
    array.flat[0] = low
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        load_image(array)


def test_a_rounding_overshoot_is_clipped_not_a_black_image():
    array = np.full((4, 4), 0.8)
    array[0, 0] = 1.0 + 1e-6  # e.g. after resampling
    grey = _grey(load_image(array))
    assert grey[0, 0] == 255 and (grey.flat[1:] == 204).all()


@SETTINGS
@given(arrays(np.uint16, shapes))
def test_uint16_uses_its_full_range_whatever_the_image_holds(array):
    expected = np.round(array.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    assert np.array_equal(_grey(load_image(array)), expected)
    # The same 16 bits as a PIL "I;16" image (what a 16-bit PNG opens as) read the same way.
    assert np.array_equal(_grey(load_image(Image.fromarray(array))), expected)


def test_a_dark_16_bit_image_stays_dark():
    array = np.full((4, 4), 1000, dtype=np.uint16)  # 1.5 % of full scale: was stretched to white
    assert (_grey(load_image(array)) == 4).all()


@SETTINGS
@given(st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint32]), shapes, st.data())
def test_wider_integers_holding_8_bit_values_are_taken_as_is(dtype, shape, data):
    array = data.draw(arrays(dtype, shape, elements=st.integers(0, min(255, np.iinfo(dtype).max))))
    assert np.array_equal(_grey(load_image(array)), array.astype(np.uint8))


@pytest.mark.parametrize("value", [-1, 256, 70000])
def test_integers_outside_8_bits_are_refused(value):
    array = np.zeros((3, 3), dtype=np.int64)
    array[1, 1] = value
    with pytest.raises(ValueError, match=r"image 0: int64 pixel values must lie in 0\.\.255"):
        load_image(array)


def test_pil_float_and_int_modes_follow_the_same_rules():
    assert (_grey(load_image(Image.fromarray(np.full((3, 3), 0.5, dtype=np.float32)))) == 128).all()
    with pytest.raises(ValueError, match="float pixel values"):
        load_image(Image.fromarray(np.full((3, 3), 200.0, dtype=np.float32)))
    assert (_grey(load_image(Image.fromarray(np.full((3, 3), 77, dtype=np.int32)))) == 77).all()


def test_bool_and_tensor_inputs():
    mask = np.eye(3, dtype=bool)
    assert np.array_equal(_grey(load_image(mask)), mask.astype(np.uint8) * 255)
    half = torch.full((3, 4, 4), 0.5, dtype=torch.bfloat16)
    assert (np.asarray(load_image(half)) == 128).all()
    with pytest.raises(ValueError, match=r"float pixel values must lie in \[0, 1\]"):
        load_image(torch.full((3, 4, 4), 2.0))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_floats_are_refused(value):
    array = np.zeros((3, 3))
    array[0, 0] = value
    with pytest.raises(ValueError, match="NaN or infinite"):
        load_image(array)


def test_complex_arrays_are_refused():
    with pytest.raises(TypeError, match="unsupported array dtype complex128"):
        load_image(np.zeros((3, 3), dtype=complex))

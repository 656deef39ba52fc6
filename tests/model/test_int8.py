"""openvino int8's weights: GPTQ rounds them closer to fp32's products than rounding each weight alone does."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from imgsearch.model.int8 import gptq  # noqa: E402


def mixing(rng, width: int) -> np.ndarray:
    """Maps independent features to features that vary together, as a layer's inputs do (a few strong
    directions, the rest weak)."""
    return rng.normal(size=(width, width)) * np.geomspace(3.0, 0.05, width)[:, None]


def per_column_scales(weights: np.ndarray) -> np.ndarray:
    return np.abs(weights).max(axis=0) / 127


def relative_error(inputs, weights, values, scales) -> float:
    exact = inputs @ weights
    return float(np.sqrt(np.mean((inputs @ (values * scales) - exact) ** 2)) / exact.std())


def test_gptq_weights_give_products_closer_to_fp32_on_inputs_it_never_saw():
    rng = np.random.default_rng(0)
    width, outputs = 96, 40
    weights = rng.normal(size=(width, outputs))
    scales = per_column_scales(weights)
    features = mixing(rng, width)
    calibration, unseen = rng.normal(size=(2000, width)) @ features, rng.normal(size=(500, width)) @ features

    nearest = np.clip(np.round(weights / scales), -127, 127)
    ours = gptq(weights, scales, torch.from_numpy(calibration.T @ calibration))

    assert ours.dtype == np.int8 and ours.shape == weights.shape and np.abs(ours.astype(int)).max() <= 127
    assert np.abs(ours.astype(int) - nearest).max() >= 1  # it chose other values than the nearest ones
    rounded, chosen = (relative_error(unseen, weights, v, scales) for v in (nearest, ours.astype(float)))
    assert chosen < rounded / 2, (chosen, rounded)


def test_with_unrelated_inputs_gptq_rounds_to_nearest():
    """Nothing to make up for when no input moves with another: each weight's nearest int8 value is best."""
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(32, 8))
    scales = per_column_scales(weights)
    ours = gptq(weights, scales, torch.eye(32, dtype=torch.float64) * 50)
    np.testing.assert_array_equal(ours, np.clip(np.round(weights / scales), -127, 127).astype(np.int8))


def test_an_input_that_is_always_zero_gets_zero_weights():
    rng = np.random.default_rng(4)
    inputs = rng.normal(size=(200, 16))
    inputs[:, 5] = 0
    weights = rng.normal(size=(16, 4))
    ours = gptq(weights, per_column_scales(weights), torch.from_numpy(inputs.T @ inputs))
    assert not ours[5].any()

"""Query blending as pure maths: a weighted sum of unit vectors, renormalised; negatives pull away."""

import numpy as np
import pytest

from imgsearch.search.ranking import blend


def unit(*values):
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_one_part_is_returned_as_a_unit_vector():
    assert np.allclose(blend([(np.array([3.0, 4.0]), 1.0)]), [0.6, 0.8])


def test_parts_are_normalised_before_they_are_weighted():
    # [10, 0] and [0, 1] weigh the same at weight 1: their lengths must not count.
    assert np.allclose(blend([(np.array([10.0, 0.0]), 1.0), (np.array([0.0, 1.0]), 1.0)]), unit(1, 1))


def test_weights_tilt_the_blend_and_a_negative_weight_pulls_away():
    a, b = unit(1, 0), unit(0, 1)
    assert np.allclose(blend([(a, 3.0), (b, 1.0)]), unit(3, 1))
    away = blend([(a, 1.0), (b, -0.5)])
    assert np.allclose(away, unit(1, -0.5))
    assert float(away @ b) < 0 < float(away @ a)


def test_a_zero_vector_part_is_ignored():
    assert np.allclose(blend([(unit(1, 2), 1.0), (np.zeros(2), 5.0)]), unit(1, 2))


def test_nothing_to_blend_and_parts_that_cancel_are_errors():
    with pytest.raises(ValueError, match="^nothing to search for$"):
        blend([])
    with pytest.raises(ValueError, match="^the query parts cancel each other out; change the weights$"):
        blend([(unit(1, 1), 1.0), (unit(1, 1), -1.0)])


def test_the_result_is_float32():
    assert blend([(np.array([1.0, 1.0], dtype=np.float64), 1.0)]).dtype == np.float32

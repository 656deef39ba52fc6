"""Static int8 for an exported image tower: what ``IMGSEARCH_BACKEND=openvino IMGSEARCH_PRECISION=int8`` runs.

The tower's ONNX graph is quantised once, when its graph is built:

1. ONNX Runtime's quantiser puts Quantize/Dequantize pairs on the inputs of every matrix product with a weight:
   int8 weights with one scale per output channel, and activations with one scale per tensor, calibrated on
   ``calibration_pictures`` (percentile ranges): int8 around zero for inputs that spread both ways (layer norms',
   attention's), uint8 with a zero point for those almost all positive (GELU's). The products' outputs are not
   quantised again (the quantiser's default would round every product's result to 8 bits too, before its bias
   and the residual sum: on ViT-B/32 that alone took a third of the agreement with fp32, and time). Products of
   two activations (attention) and of one vector per image (the final projection) stay fp32.
2. Each int8 weight matrix is then rounded again by GPTQ (Frantar et al., 2022, arXiv:2210.17323), with the same
   scales: input rows are rounded one at a time, and each row's rounding error is made up for by the rows not
   yet rounded, weighted by how the calibration inputs vary together (``gptq``). Rounding each weight to its
   nearest int8 value ignores that; on ViT-B/32's layers GPTQ's products stray from fp32's 5 to 8 times less, at
   no cost when the model runs.

OpenVINO then runs the graph with int8 kernels. With VNNI or AMX they are fast. Without them (AVX2 alone) they
ran slower than OpenVINO's own fp32 (10.5 against 16.9 images/s on an AVX2-only EPYC, 2026-12-05, with this
recipe and the earlier ones alike), so ``auto`` offers openvino int8 only on CPUs with int8 dot products.

Measured on the photos of bench/index_throughput.py (random-weight ViT-B/32, a scratch script, 2026-12-04): a
text's score error against fp32, relative to the spread of its scores over the photos, fell from 0.108 (the
previous recipe: every product's output quantised too, weights rounded to nearest) to 0.049, as low as
OpenVINO bf16's 0.048; without GPTQ it is 0.083.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from imgsearch.model.agreement import probe_pictures

log = logging.getLogger(__name__)

CALIBRATION_SEED = 99
# How the graph is made, for the graph folder's key: a change here builds the graphs anew.
RECIPE = (
    "static QDQ int8 MatMul inputs with weights, outputs not quantised: per-channel int8 weights rounded by "
    "GPTQ; percentile activations calibrated on fields and shapes, int8 two-sided, uint8 one-sided"
)
_HESSIAN_BYTES = 256 << 20  # the most memory the calibration inputs' products take at once


def calibration_pictures(size: int, count: int = 64) -> list:
    """What the activation ranges and GPTQ's weighting are calibrated on: half smooth photo-like fields (not the
    probe's own, which judge the result), half shapes, lines and edges over them, blurred or grainy at random;
    edges take activations further than smooth fields do, as real photos' edges do (in a scratch run on the photos
    of bench/index_throughput.py, the top-10 text -> image overlap went from 0.91 to 0.95 with them)."""
    from PIL import ImageDraw, ImageFilter

    rng = np.random.default_rng(CALIBRATION_SEED)
    pictures = probe_pictures(size, count // 2, seed=CALIBRATION_SEED)
    for picture in probe_pictures(size, count - count // 2, seed=CALIBRATION_SEED + 1):
        draw = ImageDraw.Draw(picture)
        for _ in range(rng.integers(3, 25)):
            left, top = (int(v) for v in rng.integers(-size // 5, size, 2))
            right, bottom = (int(v) for v in (left, top) + rng.integers(4, size * 3 // 4, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = rng.integers(0, 3)
            if shape == 0:
                draw.rectangle([left, top, right, bottom], fill=colour)
            elif shape == 1:
                draw.ellipse([left, top, right, bottom], fill=colour)
            else:
                draw.line([left, top, right, bottom], fill=colour, width=int(rng.integers(1, 8)))
        if rng.random() < 0.5:
            picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3))))
        pictures.append(picture)
    return pictures


def quantise(fp32: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """The graph ``fp32`` quantised as the module says, written to ``target`` as an ONNX QDQ graph. ``feeds``:
    the calibration batches, as the graph's inputs."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared, rounded = target.with_name("prepared.onnx"), target.with_name("rounded-to-nearest.onnx")
    try:
        with quiet_root_logger("pre-processing before quantization"), contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        weights = {initializer.name: initializer for initializer in graph.initializer}
        products = {
            node.name: (node.input[0], weights[node.input[1]])
            for node in graph.node
            if node.op_type == "MatMul" and node.input[1] in weights
        }
        inputs, rows, ranges = input_products(prepared, feeds, sorted({tensor for tensor, _ in products.values()}))
        images = sum(len(next(iter(feed.values()))) for feed in feeds)
        # Kept fp32: products of two activations (attention), which a scale fixed in advance fits worst and which
        # are a small share of the work; and products of one vector per image (the final projection), which cost
        # nothing and whose few calibration rows GPTQ would fit, not generalise from.
        excluded = [
            node.name
            for node in graph.node
            if node.op_type == "MatMul" and (node.name not in products or rows[products[node.name][0]] <= images)
        ]
        del graph
        # uint8 with a zero point (the default) for inputs that are almost all positive (GELU's output); int8 around
        # zero for those that spread both ways (layer norms', attention's): the same 256 steps, none spent on
        # values that never come.
        two_sided = {
            tensor: [{"quant_type": QuantType.QInt8, "symmetric": True}]
            for tensor, (low, high) in ranges.items()
            if -low >= high / 4
        }
        _quantize_static(prepared, rounded, feeds, excluded, two_sided)
        model = onnx.load(str(rounded))
        _round_weights_by_gptq(
            model,
            {name: (inputs[tensor], weight) for name, (tensor, weight) in products.items() if name not in excluded},
        )
        onnx.save(model, str(target))
    finally:
        prepared.unlink(missing_ok=True)
        rounded.unlink(missing_ok=True)
    return target


def _quantize_static(
    prepared: Path, rounded: Path, feeds: list[dict[str, np.ndarray]], excluded: list[str], two_sided: dict
) -> None:
    """onnxruntime's static QDQ quantisation of the MatMul nodes not ``excluded``, calibrated on ``feeds``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with quiet_root_logger("pre-processing before quantization"), contextlib.redirect_stdout(io.StringIO()):
        # Percentile, not min-max: one extreme activation would stretch a scale that every other value pays for.
        quantize_static(
            str(prepared),
            str(rounded),
            Calibration(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"TensorQuantOverrides": two_sided, "OpTypesToExcludeOutputQuantization": ["MatMul"]},
        )


def _round_weights_by_gptq(model, products: dict) -> None:
    """Choose the int8 weights of each MatMul node named in ``products`` by ``gptq``, at the scales the quantiser
    set. ``products``: node name -> (its input's X^T X, its fp32 weight initializer)."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    made_by = {output: node for node in model.graph.node for output in node.output}
    for node in model.graph.node:
        dequantise = made_by.get(node.input[1]) if node.name in products else None
        if dequantise is None or dequantise.op_type != "DequantizeLinear":  # left fp32 by the quantiser
            continue
        # DequantizeLinear(int8 weights, a scale per output column)
        inputs, weight = products[node.name]
        values = gptq(numpy_helper.to_array(weight), numpy_helper.to_array(initializers[dequantise.input[1]]), inputs)
        initializers[dequantise.input[0]].CopyFrom(numpy_helper.from_array(values, dequantise.input[0]))


def input_products(graph: Path, feeds: list[dict[str, np.ndarray]], tensors: list[str]) -> tuple[dict, dict, dict]:
    """Each named tensor's X^T X (float64 torch tensors), its number of rows and its (lowest, highest) value, X
    its rows over the last axis over ``feeds`` run through ``graph`` in fp32. In as many passes as keep the sums
    under ``_HESSIAN_BYTES``."""
    import onnx
    import onnxruntime
    import torch
    from onnx import helper

    model = onnx.load(str(graph))
    known = {output.name for output in model.graph.output}
    for name in tensors:
        if name not in known:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del model
    one = {name: value[:1] for name, value in feeds[0].items()}
    widths = {name: output.shape[-1] for name, output in zip(tensors, session.run(tensors, one))}
    passes, current, used = [], [], 0
    for name in tensors:
        size = widths[name] ** 2 * 8
        if current and used + size > _HESSIAN_BYTES:
            passes.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    passes += [current] if current else []
    products, counts, ranges = {}, dict.fromkeys(tensors, 0), {name: (np.inf, -np.inf) for name in tensors}
    for names in passes:
        sums = {name: torch.zeros(widths[name], widths[name], dtype=torch.float64) for name in names}
        for feed in feeds:
            for name, output in zip(names, session.run(names, feed)):
                rows = torch.from_numpy(np.ascontiguousarray(output.reshape(-1, output.shape[-1])))
                sums[name] += (rows.T @ rows).double()
                counts[name] += len(rows)
                ranges[name] = (min(ranges[name][0], float(output.min())), max(ranges[name][1], float(output.max())))
        products.update(sums)
    return products, counts, ranges


def gptq(
    weights: np.ndarray,
    scales: np.ndarray,
    products: np.ndarray,
    limit: int = 127,
    block: int = 128,
    damping: float = 0.01,
) -> np.ndarray:
    """int8 values for the (inputs, outputs) matrix ``weights`` of a product ``x @ weights``, at the given scale
    per output column, chosen so that ``x @ (values * scales)`` stays close to ``x @ weights`` for inputs like the
    calibration's, whose X^T X is ``products``: input rows are rounded in turn, and each one's rounding error is
    made up for by the rows still to be rounded, as far as the inputs' correlations allow (GPTQ)."""
    import torch

    remaining = torch.from_numpy(np.asarray(weights, dtype=np.float64)).clone()
    scale = torch.from_numpy(np.asarray(scales, dtype=np.float64))
    hessian = products.to(torch.float64).clone()
    unused = torch.diag(hessian) == 0  # an input that was always zero: its weights cannot matter
    hessian[unused, unused] = 1
    remaining[unused, :] = 0
    hessian += damping * torch.mean(torch.diag(hessian)) * torch.eye(len(hessian), dtype=torch.float64)
    # The upper Cholesky factor of the inverse: row i holds how the rows after i make up for row i's error.
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    values = torch.zeros_like(remaining)
    for start in range(0, len(remaining), block):
        end = min(start + block, len(remaining))
        rows, errors, local = (
            remaining[start:end].clone(),
            torch.zeros_like(remaining[start:end]),
            inverse[start:end, start:end],
        )
        for i in range(end - start):
            values[start + i] = torch.clamp(torch.round(rows[i] / scale), -limit, limit)
            errors[i] = (rows[i] - values[start + i] * scale) / local[i, i]
            rows[i + 1 :] -= torch.outer(local[i, i + 1 :], errors[i])
        remaining[end:] -= inverse[start:end, end:].T @ errors
    return values.to(torch.int8).numpy()


@contextlib.contextmanager
def quiet_root_logger(text: str) -> Iterator[None]:
    """Drop the root logger's records that contain ``text`` (a library's advice that a user cannot act on)."""
    quiet = logging.Filter()
    quiet.filter = lambda record: text not in record.getMessage()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)

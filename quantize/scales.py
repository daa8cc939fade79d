"""Per-channel weight scales that float16 holds exactly.

A per-channel INT8 layer stores one float32 scale per output channel: 262 scales, 1,048 bytes, in
`lenet_pool` (1.7 % of the file). Rounding each such scale to the nearest float16 value moves it by
at most 2^-11 of itself; the int8 weights stay as they are (|q| <= 127, so q * s / s' moves by
< 0.07 and rounds back to q), which makes the layer's weights q * s' instead of q * s: a relative
change below 0.05 %, far inside the quantization step itself (one level in 127 = 0.8 %). With
scales exact in float16, a later stage can store them in half the bytes without changing a single
output (optimize.ort_int8's `narrow-constants`, exact by round trip).

An int32 bias quantized with scale x_scale * w_scale (ORT's QDQ bias) must keep that relation, or
the fused integer kernel (which takes the int32 bias as is) and the QDQ graph would compute
different things: its scale becomes x_scale * s' and its values are requantized from the
dequantized bias (error <= half a step of the new scale). A weight whose bias cannot be matched that
way keeps its float32 scales."""

from __future__ import annotations

from typing import Any

import numpy as np

BIAS_SLOT = {"Conv": 2, "Gemm": 2, "ConvTranspose": 2}


def _half(a: np.ndarray) -> np.ndarray | None:
    """`a` rounded to the nearest float16 value, as float32; None if that is not a positive finite
    scale (overflow, underflow to 0, or a scale that was not positive and finite to begin with)."""
    if not (np.isfinite(a).all() and (a > 0).all()) or np.abs(a).max() > np.finfo(np.float16).max:
        return None
    h = a.astype(np.float16).astype(np.float32)
    return h if (h > 0).all() else None


def half_weight_scales(model: Any) -> dict[str, Any]:
    """Round, in place, every per-channel scale of a DequantizeLinear over an int8/uint8 initializer
    (a weight) to the nearest float16 value, and requantize the int32 bias that goes with it.
    Returns what changed: tensors, biases requantized, the largest relative scale change."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    made_by = {o: n for n in g.node for o in n.output}
    uses: dict[str, list[tuple[Any, int]]] = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            uses.setdefault(i, []).append((n, k))

    def const_dq(name: str, dtypes: tuple[int, ...]) -> tuple[Any, Any, Any] | None:
        """(node, quantized initializer, float32 scale initializer) of a DequantizeLinear of a
        constant whose tensors have no other user."""
        dq = made_by.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 2:
            return None
        q, s = inits.get(dq.input[0]), inits.get(dq.input[1])
        if q is None or s is None or q.data_type not in dtypes or s.data_type != TensorProto.FLOAT:
            return None
        if len(uses.get(q.name, [])) != 1 or len(uses.get(s.name, [])) != 1:
            return None
        return dq, q, s

    def act_scale(name: str) -> np.ndarray | None:
        dq = made_by.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits:
            return None
        return numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)

    plans = []
    for node in g.node:  # const_dq takes only a DequantizeLinear of a weight
        w = const_dq(node.output[0], (TensorProto.INT8, TensorProto.UINT8)) if node.output else None
        if w is None:
            continue
        dq, _, s = w
        old = numpy_helper.to_array(s).astype(np.float32)
        new = _half(old) if old.size > 1 else None
        if new is None or np.array_equal(new, old):
            continue
        bias = None
        users = uses.get(dq.output[0], [])
        if len(users) != 1:
            continue
        node, slot = users[0]
        b_slot = BIAS_SLOT.get(node.op_type)
        if slot == 1 and b_slot is not None and len(node.input) > b_slot and node.input[b_slot]:
            b = const_dq(node.input[b_slot], (TensorProto.INT32,))
            x_s = act_scale(node.input[0])
            if b is None and made_by.get(node.input[b_slot]) is not None:
                continue  # a bias built some other way: leave this weight alone
            if b is not None:
                if x_s is None or x_s.size != 1:
                    continue
                b_scale = (x_s.reshape(()) * new).astype(np.float32)
                if not (np.isfinite(b_scale).all() and (b_scale > 0).all()):
                    continue
                bias = (b, b_scale)
        plans.append((s, old, new, bias))

    requantized = 0
    for s, _old, new, bias in plans:
        s.CopyFrom(numpy_helper.from_array(new, s.name))
        if bias is not None:
            (_, qb_t, bs_t), b_scale = bias
            qb = numpy_helper.to_array(qb_t).astype(np.float64)
            bs = numpy_helper.to_array(bs_t).astype(np.float64)
            info = np.iinfo(np.int32)
            q = np.clip(np.rint(qb * bs / b_scale.astype(np.float64)), info.min, info.max).astype(np.int32)
            qb_t.CopyFrom(numpy_helper.from_array(q, qb_t.name))
            bs_t.CopyFrom(numpy_helper.from_array(b_scale.reshape(np.shape(bs)), bs_t.name))
            requantized += 1
    return {
        "dtype": "float16",
        "tensors": len(plans),
        "channels": int(sum(p[1].size for p in plans)),
        "biases_requantized": requantized,
        "max_relative_change": float(max((np.abs(p[2] / p[1] - 1).max() for p in plans), default=0.0)),
    }

"""ONNX Runtime target passes for a QDQ INT8 model: an integer NHWC graph with no layout round trips.

ORT runs a QDQ model by fusing DQ -> op -> Q into integer kernels and (level 3) moving convolutions
to NHWC. What it cannot fuse stays behind as float islands and Transposes: on lenet_pool's
space-to-depth graph 4 Transposes, a uint8 MaxPool in NCHW (the generic, slow kernel), float Pad and
SpaceToDepth between Q/DQ pairs, and a Q of the input. These passes start from ORT's own level-3
graph (saved with the hardware-specific NCHWc transformer disabled, so the file holds only standard
ops and the com.microsoft integer ops every CPU build has) and remove what is left:

- uint8-input: the input's QuantizeLinear with scale 1 and zero point 0 (raw pixels are bytes) goes;
  the model takes uint8 pixels. A constant Pad and a SpaceToDepth before the first integer conv
  become a Reshape/Transpose/Reshape straight into NHWC (the Transpose in float32 between two
  exact Casts: onnxruntime's uint8 Transpose is slow with more than one thread), and the Pad folds
  into the conv: padding with value v equals padding with the zero point v and adding
  (v - zp) * sum(w) to the int32 bias (exact in integers).
- nhwc-group-max: Transpose -> Reshape -> MaxPool over channel groups -> Reshape -> Transpose
  (the pool fused into a space-to-depth conv) becomes Reshape -> NhwcMaxPool -> Reshape; without
  the trailing Transpose (a flatten follows), Reshape -> NhwcMaxPool -> Transpose to NCHW, which
  nhwc-flatten-gemm then folds into the weights.
- nhwc-flatten-gemm: Transpose(NHWC->NCHW) -> Reshape(flatten) -> (Q)Gemm/MatMul with constant
  weights becomes a flatten in NHWC order with the weight rows permuted to match.
- nhwc-pad-channels: an NHWC QLinearConv whose channels (per pool group, after a Reshape) are not a
  multiple of 8, feeding another NHWC QLinearConv through channel-wise ops only, gets output
  channels added up to the next multiple of 8 (weights equal to their zero point, bias 0: they add
  nothing) and the consumer gets matching input channels of weight zero point. MLAS's uint8 NHWC
  kernels then run whole vectors: lenet_pool's 6-channel group max and second conv.
- fold-weight-dq: a DequantizeLinear of an int8 weight with zero point 0 (the layers a recipe keeps
  in FP32 with `weight_only`) becomes Cast * scale, which onnxruntime folds when it loads the model
  (it runs a DequantizeLinear on every call); nhwc-flatten-gemm also reorders through such a weight
  and a per-tensor DequantizeLinear of the activations. Exact up to float summation order.
- pack-padding: an integer initializer ending in a block of equal values along an axis (the channels
  nhwc-pad-channels adds, per pool group) is stored without them behind a constant Pad (and
  Reshape) that onnxruntime folds when it loads the model: a smaller file, the same kernels; a conv
  weight over a space-to-depth input whose unfolded kernel has a zero border is stored cropped.
- narrow-constants: int32 biases that fit int16 behind a Cast, equal per-channel zero points as one
  value, identical initializers merged (folded at load as well).
- uint8-transpose (not a default; ONE_THREAD_PASSES, tried by the search): the input reorder as one
  uint8 Transpose, cheaper with one thread, much slower with more in onnxruntime 1.32. A file built
  with it says so in its metadata (`tuned_for_threads`), and the runner warns a session that gives
  it more intra-op threads.

Each pass checks its preconditions on concrete shapes (taken by running the graph once) and leaves
a graph that does not match untouched, saying why. The result is checked against the QDQ model on
all test images by the caller (`make quantize-ort`): identical logits are expected, since every
rewrite is exact in integers.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lenet_edge.quantize.cleanup import compact_names
from lenet_edge.runtime.cli import name_part, parser, path_arg
from lenet_edge.runtime.files import quantize_record_path
from lenet_edge.workflow import add_model_flags, data_source, selected

MS = "com.microsoft"
TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]


class Graph:
    """Small queries over one onnx.GraphProto: producers, consumers, constants, shapes."""

    def __init__(self, model: Any, shapes: dict[str, tuple[int, ...]]):
        self.model, self.g, self.shapes = model, model.graph, shapes
        self.init = {i.name: i for i in self.g.initializer}
        self._names = (
            {n.name for n in self.g.node} | set(self.init) | {o for n in self.g.node for o in n.output}
        )

    def producer(self, name: str) -> Any:
        return next((n for n in self.g.node if name in n.output), None)

    def consumers(self, name: str) -> list[Any]:
        users = [n for n in self.g.node if name in n.input]
        return users + ([None] if name in {o.name for o in self.g.output} else [])

    def only_consumer(self, name: str, op: str) -> Any:
        users = self.consumers(name)
        return users[0] if len(users) == 1 and users[0] is not None and users[0].op_type == op else None

    def const(self, name: str) -> np.ndarray | None:
        """An initializer, or DequantizeLinear of initializers (ORT keeps Pad's value that way)."""
        from onnx import numpy_helper

        if name in self.init:
            return numpy_helper.to_array(self.init[name])
        p = self.producer(name)
        if p is not None and p.op_type == "DequantizeLinear" and p.domain in ("", "ai.onnx"):
            x, s, *z = (self.const(i) for i in p.input)
            if (
                x is not None
                and s is not None
                and s.size == 1
                and all(v is not None and v.size == 1 for v in z)
            ):
                zp = z[0].astype(np.float64) if z else 0.0
                return ((x.astype(np.float64) - zp) * s.astype(np.float64)).astype(np.float32)
        return None

    def attr(self, node: Any, name: str, default: Any = None) -> Any:
        from onnx import helper

        a = next((a for a in node.attribute if a.name == name), None)
        return default if a is None else helper.get_attribute_value(a)

    def set_attr(self, node: Any, name: str, value: Any) -> None:
        from onnx import helper

        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value))

    def fresh(self, base: str) -> str:
        k = 0
        while f"{base}_{k}" in self._names:
            k += 1
        self._names.add(f"{base}_{k}")
        return f"{base}_{k}"

    def add_const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.fresh(base)
        t = numpy_helper.from_array(np.asarray(value), name)
        self.g.initializer.append(t)
        self.init[name] = t
        return name

    def node(self, op: str, inputs: list[str], base: str, domain: str = "", **attrs: Any) -> tuple[Any, str]:
        from onnx import helper

        out = self.fresh(base)
        return helper.make_node(op, inputs, [out], name=self.fresh(op), domain=domain, **attrs), out

    def replace(self, old: list[Any], new: list[Any]) -> None:
        """Put `new` where the first of `old` was, drop `old` (the graph stays topologically sorted)."""
        nodes = list(self.g.node)
        gone = [any(n == o for o in old) for n in nodes]
        at = gone.index(True)
        keep = [n for n, x in zip(nodes, gone, strict=True) if not x]
        at = sum(1 for x in gone[:at] if not x)
        copies = [type(n)() for n in keep[:at] + new + keep[at:]]
        for c, n in zip(copies, keep[:at] + new + keep[at:], strict=True):
            c.CopyFrom(n)
        del self.g.node[:]
        self.g.node.extend(copies)

    def prune(self) -> None:
        """Drop nodes and initializers nothing uses any more."""
        while True:
            used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
            dead = [n for n in self.g.node if not any(o in used for o in n.output)]
            if not dead:
                break
            self.replace(dead, [])
        used = {i for n in self.g.node for i in n.input}
        for t in [t for t in self.g.initializer if t.name not in used]:
            self.g.initializer.remove(t)
            self.init.pop(t.name, None)

    def rename_uses(self, old: str, new: str) -> None:
        for n in self.g.node:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new
        for o in self.g.output:
            if o.name == old:
                o.name = new


def _scalar(g: Graph, name: str, value: float, dtype: Any = None) -> bool:
    c = g.const(name) if name else None
    return (
        c is not None
        and c.size == 1
        and float(c.reshape(())) == value
        and (dtype is None or c.dtype == dtype)
    )


def _is_unit_q(g: Graph, node: Any, op: str) -> bool:
    """QuantizeLinear/DequantizeLinear with scale 1 and uint8 zero point 0: an exact byte <-> float."""
    return (
        node is not None
        and node.op_type == op
        and len(node.input) == 3
        and _scalar(g, node.input[1], 1.0)
        and _scalar(g, node.input[2], 0.0, np.uint8)
    )


def _byte_transpose(g: Graph, x: str, perm: list[int], base: str) -> tuple[list[Any], str]:
    """Transpose uint8 `x` by way of float32 (Cast, Transpose, Cast back: exact for bytes).

    onnxruntime 1.32 runs a 1-byte Transpose as one MlasTranspose per inner block, each handed to
    the intra-op thread pool: with 2 threads lenet_pool's input reorder cost ~1.4 ms at batch 64
    (20 µs with one thread) and INT8 ran 2.4x slower on 2 threads than on 1. A float Transpose does
    not split like that: 2 threads, batch 64, 1,415 -> 395 µs; batch 1 one thread +0.5 µs, +1 %
    aarch64 instructions (docs/performance.md)."""
    from onnx import TensorProto

    c1, f = g.node("Cast", [x], base, to=TensorProto.FLOAT)
    t, ft = g.node("Transpose", [f], base, perm=perm)
    c2, y = g.node("Cast", [ft], base, to=TensorProto.UINT8)
    return [c1, t, c2], y


def uint8_input(g: Graph) -> str:
    """See the module docstring. Returns '' when applied, or why not."""
    from onnx import TensorProto

    if len(g.g.input) != 1:
        return "graph has not exactly one input"
    inp = g.g.input[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        return "input is not float32"
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        return "input is not [N, C, H, W] with static C, H, W"
    _, c, h, w = dims
    q = g.only_consumer(inp.name, "QuantizeLinear")
    if not _is_unit_q(g, q, "QuantizeLinear"):
        return "input is not quantized with scale 1, zero point 0 (uint8)"
    chain, cur = [q], q.output[0]
    pads, pad_value, block = [0, 0, 0, 0], None, 1
    # Optional float islands ORT left: DQ -> Pad(const) -> Q and DQ -> SpaceToDepth -> Q, each exact.
    while True:
        dq = g.only_consumer(cur, "DequantizeLinear")
        if not _is_unit_q(g, dq, "DequantizeLinear"):
            break
        op = g.consumers(dq.output[0])
        op = op[0] if len(op) == 1 else None
        if op is None or op.op_type not in ("Pad", "SpaceToDepth"):
            return f"a DequantizeLinear of the input feeds {op.op_type if op else 'several nodes'}"
        q2 = g.only_consumer(op.output[0], "QuantizeLinear")
        if not _is_unit_q(g, q2, "QuantizeLinear"):
            return f"{op.op_type} output is not requantized with scale 1, zero point 0"
        if op.op_type == "Pad":
            if block != 1 or pad_value is not None:
                return "Pad after SpaceToDepth or twice"
            p = g.const(op.input[1]) if len(op.input) > 1 else None
            v = g.const(op.input[2]) if len(op.input) > 2 and op.input[2] else np.zeros(1, np.float32)
            mode = g.attr(op, "mode", b"constant")
            if p is None or v is None or v.size != 1 or mode not in (b"constant", "constant"):
                return "Pad is not constant-mode with constant pads and value"
            if len(op.input) > 3 and op.input[3]:
                return "Pad has axes"
            p = p.astype(np.int64).tolist()
            if len(p) != 8 or any(p[i] for i in (0, 1, 4, 5)) or min(p) < 0:
                return "Pad pads more than H and W, or crops"
            pads = [p[2], p[3], p[6], p[7]]  # top, left, bottom, right
            pad_value = int(np.clip(np.rint(float(v.reshape(()))), 0, 255))  # what Q(1, 0) makes of it
        else:
            if g.attr(op, "mode", b"DCR") not in (b"DCR", "DCR"):
                return "SpaceToDepth is not DCR"
            block = int(g.attr(op, "blocksize"))
        chain += [dq, op, q2]
        cur = q2.output[0]
    t = g.only_consumer(cur, "Transpose")
    if t is None or list(g.attr(t, "perm", [])) != TO_NHWC:
        return "the quantized input does not go to NHWC through one Transpose"
    conv = g.only_consumer(t.output[0], "QLinearConv")
    if conv is None or conv.domain != MS or g.attr(conv, "channels_last", 0) != 1:
        return "the NHWC input does not feed an NHWC QLinearConv"
    if not (_scalar(g, conv.input[1], 1.0) and _scalar(g, conv.input[2], 0.0, np.uint8)):
        return "the conv's input scale/zero point are not 1/0"
    hp, wp = h + pads[0] + pads[2], w + pads[1] + pads[3]
    if hp % block or wp % block:
        return f"padded H, W ({hp}, {wp}) not divisible by the block {block}"
    # Whole-block pads on a divisible image fold into the conv; other pads stay a uint8 Pad.
    fold = pad_value is not None and any(pads) and not any(x % block for x in (*pads, h, w))
    wq = g.const(conv.input[3])
    if wq is None:
        return "conv weights are not constant"
    old_pads = list(g.attr(conv, "pads", [0, 0, 0, 0]))
    if g.attr(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return "conv uses auto_pad"
    if pad_value is not None and any(pads) and any(old_pads) and not any(x % block for x in (*pads, h, w)):
        return "conv pads too (the fold would pad with two values)"

    # Rewrite: uint8 input -> (space-to-depth as Reshape/Transpose/Reshape | Transpose) -> conv.
    new: list[Any] = []
    inp.type.tensor_type.elem_type = TensorProto.UINT8
    src = inp.name
    if pad_value is not None and any(pads) and not fold:
        p8 = np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])
        pad_node, src = g.node(
            "Pad",
            [src, g.add_const("pads", p8), g.add_const("pad_value", np.array(pad_value, np.uint8))],
            "pad",
        )
        new, h, w = [pad_node], hp, wp
    if block > 1:
        b = block
        # DCR space-to-depth straight into NHWC; one channel drops its unit axis (a 5-D transpose
        # instead of 6-D: 30.5 -> 27.6 µs for lenet_pool at batch 1, 1,000 -> 834 µs at 64)
        shape, perm = (
            ([-1, h // b, b, w // b, b], [0, 1, 3, 2, 4])
            if c == 1
            else (
                [-1, c, h // b, b, w // b, b],
                [0, 2, 4, 3, 5, 1],
            )
        )
        n1, r1 = g.node("Reshape", [src, g.add_const("s2d_shape", np.array(shape))], "s2d")
        moved, t1 = _byte_transpose(g, r1, perm, "s2d")
        n3, x = g.node(
            "Reshape", [t1, g.add_const("s2d_shape", np.array([-1, h // b, w // b, b * b * c]))], "s2d"
        )
        new += [n1, *moved, n3]
    elif c == 1:  # NCHW -> NHWC with one channel only relabels axes (ORT copies it)
        n1, x = g.node("Transpose", [src], "nhwc", perm=TO_NHWC)
        new += [n1]
    else:
        moved, x = _byte_transpose(g, src, TO_NHWC, "nhwc")
        new += moved
    conv.input[0] = x
    if fold:
        hb, wb = [p // block for p in pads[::2]], [p // block for p in pads[1::2]]
        g.set_attr(
            conv, "pads", [old_pads[0] + hb[0], old_pads[1] + wb[0], old_pads[2] + hb[1], old_pads[3] + wb[1]]
        )
        wsum = wq.astype(np.int64).reshape(wq.shape[0], -1).sum(axis=1)
        bias = g.const(conv.input[8]).astype(np.int64) if len(conv.input) > 8 and conv.input[8] else 0
        b32 = bias + pad_value * wsum
        if np.abs(b32).max() >= 2**31:
            return "folded bias overflows int32"
        conv.input[2] = g.add_const("pad_as_zero_point", np.array(pad_value, np.uint8))
        while len(conv.input) < 9:
            conv.input.append("")
        conv.input[8] = g.add_const("bias_with_pad", b32.astype(np.int32))
    g.replace([*chain, t], new)
    g.prune()
    return ""


def _each_match(g: Graph, rewrite_one: Callable[[Graph, Any], bool]) -> int:
    """Rewrite matches one at a time, rescanning the graph after each (node lists are copied)."""
    hits = 0
    while any(rewrite_one(g, n) for n in list(g.g.node)):
        hits += 1
    g.prune()
    return hits


def _group_max_one(g: Graph, t1: Any) -> bool:
    if t1.op_type == "Transpose" and list(g.attr(t1, "perm", [])) == TO_NCHW:
        r1 = g.only_consumer(t1.output[0], "Reshape")
        mp = r1 and g.only_consumer(r1.output[0], "MaxPool")
        r2 = mp and g.only_consumer(mp.output[0], "Reshape")
        if not r2 or len(mp.output) != 1:
            return False
        t2 = g.only_consumer(r2.output[0], "Transpose")
        if t2 is not None and list(g.attr(t2, "perm", [])) != TO_NHWC:
            return False
        n, h, w, gc = g.shapes[t1.input[0]]
        s1, s2 = g.shapes[r1.output[0]], g.shapes[r2.output[0]]
        k, st = list(g.attr(mp, "kernel_shape", [])), list(g.attr(mp, "strides", [1, 1]))
        if any(g.attr(mp, "pads", [0, 0, 0, 0])) or g.attr(mp, "ceil_mode", 0) or len(k) != 2:
            return False
        groups = s1[2] if len(s1) == 4 else 0
        if not (s1 == (n, 1, groups, gc // groups * h * w) and k == [groups, 1] and st == [groups, 1]):
            return False
        if (
            gc % groups
            or s2 != (n, gc // groups, h, w)
            or any(d != 1 for d in g.attr(mp, "dilations", [1, 1]))
        ):
            return False
        c = gc // groups
        # NHWC [n, h, w, groups*c] is [n, h, w*groups, c] in memory: a (1, groups) pool over that
        # W gives [n, h, w, c] directly, no reshape back
        a, x1 = g.node(
            "Reshape", [t1.input[0], g.add_const("gmax_shape", np.array([-1, h, w * groups, c]))], "gmax"
        )
        b, x2 = g.node("NhwcMaxPool", [x1], "gmax", domain=MS, kernel_shape=[1, groups], strides=[1, groups])
        if t2 is not None:
            g.rename_uses(t2.output[0], x2)
            g.replace([t1, r1, mp, r2, t2], [a, b])
            return True
        # the pooled map leaves in NCHW (a flatten follows: nhwc-flatten-gemm takes this Transpose)
        t, x3 = g.node("Transpose", [x2], "gmax", perm=TO_NCHW)
        g.rename_uses(r2.output[0], x3)
        g.replace([t1, r1, mp, r2], [a, b, t])
        return True
    return False


def nhwc_group_max(g: Graph) -> str:
    return "" if _each_match(g, _group_max_one) else "no NHWC -> channel-group MaxPool -> NHWC chain"


# (op, domain) -> index of the constant weight input whose rows follow the flattened features
GEMMS = {
    ("QGemm", MS): 3,
    ("QLinearMatMul", ""): 3,
    ("MatMulInteger", ""): 1,
    ("Gemm", ""): 1,
    ("MatMul", ""): 1,
    ("FusedGemm", MS): 1,
}


def _dq_of_own_initializer(g: Graph, node: Any) -> bool:
    """A standard DequantizeLinear whose input is an initializer nothing else reads (a weight
    stored int8: what nhwc-flatten-gemm reorders through and fold-weight-dq folds)."""
    return (
        node is not None
        and node.op_type == "DequantizeLinear"
        and node.domain in ("", "ai.onnx")
        and node.input[0] in g.init
        and len(g.consumers(node.input[0])) == 1
    )


def _int8_weight_dq(g: Graph, name: str, k_axis: int) -> Any:
    """The DequantizeLinear that makes weight `name` from an int8 initializer of its own, with
    scales that do not run along the K axis (per-tensor, or per output column), else None."""
    p = g.producer(name)
    if not _dq_of_own_initializer(g, p) or len(g.consumers(name)) != 1:
        return None
    s = g.const(p.input[1])
    ndim = len(g.init[p.input[0]].dims)
    if s is None or ndim != 2 or (s.size > 1 and g.attr(p, "axis", 1) % ndim == k_axis):
        return None
    return p


def _flatten_gemm_one(g: Graph, t: Any) -> bool:
    if t.op_type == "Transpose" and list(g.attr(t, "perm", [])) == TO_NCHW:
        r = g.only_consumer(t.output[0], "Reshape") or g.only_consumer(t.output[0], "Flatten")
        if r is None:
            return False
        n, h, w, c = g.shapes[t.input[0]]
        if g.shapes[r.output[0]] != (n, h * w * c):
            return False
        # a per-tensor DequantizeLinear may sit between the flatten and a float Gemm (weight-only
        # layers): it acts on each element alone, so it commutes with reordering the features
        dq = g.only_consumer(r.output[0], "DequantizeLinear")
        if dq is not None:
            s = g.const(dq.input[1])
            if s is None or s.size != 1:
                return False
        users = g.consumers((dq or r).output[0])
        gemm = users[0] if len(users) == 1 and users[0] is not None else None
        if gemm is None or (gemm.op_type, gemm.domain) not in GEMMS or g.attr(gemm, "transA", 0):
            return False
        bi = GEMMS[(gemm.op_type, gemm.domain)]
        trans_b = g.attr(gemm, "transB", 0)
        holder, hi = gemm, bi  # the node whose input holds the weight rows to permute
        if gemm.input[bi] not in g.init or len(g.consumers(gemm.input[bi])) != 1:
            holder, hi = _int8_weight_dq(g, gemm.input[bi], 1 if trans_b else 0), 0
            if holder is None:
                return False
        wt = g.const(holder.input[hi])
        if wt is None:
            return False
        perm = nhwc_row_order(c, h, w)
        wt = wt[:, perm] if trans_b else wt[perm]
        holder.input[hi] = g.add_const("weights_nhwc", np.ascontiguousarray(wt))
        a, x = g.node("Reshape", [t.input[0], g.add_const("flat_shape", np.array([-1, h * w * c]))], "flat")
        (dq or gemm).input[0] = x
        g.replace([t, r], [a])
        return True
    return False


def nhwc_row_order(c: int, h: int, w: int) -> np.ndarray:
    """For each row of a flatten in NHWC order, the row of the NCHW flatten it is (a permutation)."""
    return np.arange(h * w * c).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)


def nhwc_flatten_gemm(g: Graph) -> str:
    hits = _each_match(g, _flatten_gemm_one)
    return "" if hits else "no Transpose(NHWC->NCHW) -> flatten -> Gemm with constant weights"


# MLAS's NHWC uint8 kernels step through channels in vectors of 8 and more and finish the rest one
# byte at a time (measured: a (1,4) NhwcMaxPool over the same 4,704 bytes costs 63k aarch64
# instructions with 6 channels, 22k with 8; docs/performance.md).
CHANNEL_MULTIPLE = 8
CHANNEL_OPS = {("Reshape", ""), ("NhwcMaxPool", MS)}  # ops that pass channels through untouched


def _nhwc_conv(g: Graph, n: Any) -> bool:
    return (
        n is not None
        and (n.op_type, n.domain) == ("QLinearConv", MS)
        and g.attr(n, "channels_last", 0) == 1
        and g.attr(n, "group", 1) == 1
        and n.input[3] in g.init
    )


def _widen(a: np.ndarray, axis: int, idx: np.ndarray, size: int, fill: Any) -> np.ndarray:
    """`a` with its `axis` grown to `size`: old entries at `idx`, `fill` (broadcast) elsewhere."""
    shape = list(a.shape)
    shape[axis] = size
    out = np.empty(shape, a.dtype)
    out[...] = fill
    np.moveaxis(out, axis, 0)[idx] = np.moveaxis(a, axis, 0)
    return out


def _pad_channels_one(g: Graph, p: Any) -> bool:
    if not _nhwc_conv(g, p):
        return False
    w = g.const(p.input[3])
    oc = c = w.shape[0]
    chain, cur = [], p.output[0]
    while True:  # producer -> (Reshape | NhwcMaxPool)* -> consumer conv, one consumer each
        users = g.consumers(cur)
        u = users[0] if len(users) == 1 else None
        if u is None:
            return False
        if (u.op_type, u.domain) in CHANNEL_OPS:
            if u.op_type == "Reshape":
                shape = g.const(u.input[1])
                last = int(shape[-1]) if shape is not None and shape.ndim == 1 else 0
                # the last axis splits into groups of `last` channels; anything else does not match
                if last <= 0 or c % last or g.shapes[cur][-1] != c or g.shapes[u.output[0]][-1] != last:
                    return False
                c = last
            chain.append(u)
            cur = u.output[0]
            continue
        if not _nhwc_conv(g, u) or u.input[0] != cur:
            return False
        q = u
        break
    wq = g.const(q.input[3])
    if c % CHANNEL_MULTIPLE == 0 or wq.shape[1] != c:
        return False
    groups, cp = oc // c, -(-c // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE
    idx = (np.arange(groups)[:, None] * cp + np.arange(c)[None, :]).reshape(-1)
    # producer: new output channels whose weights equal their zero point (they add nothing), bias 0
    wzp = g.const(p.input[5])  # a per-channel zero point gets 0 for the new channels (below)
    fill_w = wzp.reshape(-1)[0] if wzp is not None and wzp.size == 1 else 0
    p.input[3] = g.add_const("w_padded", _widen(w, 0, idx, groups * cp, fill_w))
    for k, fill in ((4, 1.0), (5, 0)):  # per-channel scale / zero point of the new channels
        v = g.const(p.input[k])
        if v is not None and v.size == oc > 1:
            p.input[k] = g.add_const("w_padded", _widen(v.reshape(-1), 0, idx, groups * cp, fill))
    if len(p.input) > 8 and p.input[8]:
        p.input[8] = g.add_const("bias_padded", _widen(g.const(p.input[8]), 0, idx, groups * cp, 0))
    for r in chain:
        if r.op_type == "Reshape":  # each last axis holds a whole number of the final groups
            shape = g.const(r.input[1]).copy()
            shape[-1] = shape[-1] // c * cp
            r.input[1] = g.add_const("shape_padded", shape)
    # consumer: weights for the new input channels equal the weight zero point (per output channel)
    qzp = g.const(q.input[5])
    if qzp is None:
        fill_q: Any = 0
    elif qzp.size > 1:
        fill_q = qzp.reshape(-1, *[1] * (wq.ndim - 1))
    else:
        fill_q = qzp.reshape(())
    q.input[3] = g.add_const("w_padded", _widen(wq, 1, np.arange(c), cp, fill_q))
    return True


def nhwc_pad_channels(g: Graph) -> str:
    hits = _each_match(g, _pad_channels_one)
    return (
        ""
        if hits
        else f"no NHWC QLinearConv -> (Reshape | NhwcMaxPool)* -> QLinearConv with channels not a multiple of {CHANNEL_MULTIPLE}"
    )


def _fold_weight_dq_one(g: Graph, dq: Any) -> bool:
    from onnx import TensorProto

    if not _dq_of_own_initializer(g, dq):
        return False
    x, s = g.const(dq.input[0]), g.const(dq.input[1])
    z = g.const(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int8)
    if x is None or x.dtype != np.int8 or s is None or z is None or z.any():
        return False
    if s.size > 1:
        axis = g.attr(dq, "axis", 1) % x.ndim
        if s.ndim != 1 or x.shape[axis] != s.size:
            return False
        shape = [1] * x.ndim
        shape[axis] = s.size
        s = s.reshape(shape)
    c, f = g.node("Cast", [dq.input[0]], "w8", to=TensorProto.FLOAT)
    m, y = g.node("Mul", [f, g.add_const("w8_scale", s.astype(np.float32))], "w8")
    g.rename_uses(dq.output[0], y)
    g.replace([dq], [c, m])
    return True


def fold_weight_dq(g: Graph) -> str:
    """A DequantizeLinear of an int8 weight with zero point 0 (weight-only INT8: the quantize
    recipe's `weight_only`) becomes Cast(float) * scale: the same floats (one multiply each), but
    onnxruntime constant-folds a Cast and a Mul when it loads the model, while it runs a
    DequantizeLinear on every call. The file keeps the int8 weights."""
    hits = _each_match(g, _fold_weight_dq_one)
    return "" if hits else "no DequantizeLinear of an int8 weight with zero point 0"


def _trailing_slab(a: np.ndarray) -> tuple[tuple[int, ...], int, int] | None:
    """The largest block of trailing entries equal to the last one, along one axis of `a` or of a
    view that splits one axis into (groups, per group) (channels padded per pool group):
    (view shape, axis in the view, how many trailing entries). None if there is none."""
    best: tuple[int, tuple[int, ...], int, int] | None = None
    last = a.reshape(-1)[-1]
    for axis, d in enumerate(a.shape):
        for groups in (n for n in range(1, d + 1) if d % n == 0):
            split = (groups, d // groups) if groups > 1 else (d,)
            view = (*a.shape[:axis], *split, *a.shape[axis + 1 :])
            ax = axis + len(split) - 1
            b = np.moveaxis(a.reshape(view), ax, 0)
            k = 0
            while k < b.shape[0] - 1 and (b[b.shape[0] - 1 - k] == last).all():
                k += 1
            removed = k * (b.size // b.shape[0])
            if k and (best is None or removed > best[0]):
                best = (removed, view, ax, k)
    return None if best is None else best[1:]


# A conv over a space-to-depth input (channels c' = (dy*b + dx)*C + c, ONNX SpaceToDepth's order)
# is a conv with a b-times larger kernel over the original layout: W[m, c', ky, kx] is
# U[m, c, b*ky + dy, b*kx + dx]. A strided conv folded onto such an input (lenet_stride's 5x5
# stride-2 conv as a 3x3 conv over 4x6 channels) leaves a zero border in U (the 6th row and
# column); U is stored cropped and rebuilt by Pad -> Reshape -> Transpose -> Reshape.
S2D_BLOCKS = (2, 3, 4)


def _s2d_unfold(a: np.ndarray, b: int) -> np.ndarray:
    m, cb, kh, kw = a.shape
    return (
        a.reshape(m, b, b, cb // (b * b), kh, kw).transpose(0, 3, 4, 1, 5, 2).reshape(m, -1, kh * b, kw * b)
    )


def _s2d_border(a: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, Any] | None:
    """The block b whose unfolded kernel U has the widest border of one value (a corner's), with
    U cropped to the inside of that border, the Pad's pads and the value (None if no border)."""
    best: tuple[int, np.ndarray, np.ndarray, Any] | None = None
    if a.ndim != 4:
        return None
    for b in (b for b in S2D_BLOCKS if a.shape[1] % (b * b) == 0):
        u = _s2d_unfold(a, b)
        for fill in {u.reshape(-1)[0], u.reshape(-1)[-1]}:
            inside = (u != fill).any(axis=(0, 1))
            if not inside.any():
                continue
            rows, cols = (np.flatnonzero(inside.any(axis=k)) for k in (1, 0))
            crop = u[:, :, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            after = (u.shape[2] - 1 - rows[-1], u.shape[3] - 1 - cols[-1])
            pads = np.array([0, 0, rows[0], cols[0], 0, 0, *after], np.int64)
            if crop.size < u.size and (best is None or crop.size < best[1].size):
                best = (b, crop, pads, fill)
    return best


PACK_MIN_SAVING = 128  # bytes: a Pad node and its pads/shape initializers cost ~100-150

# A conv whose output channels are P x P phases of one kernel (m = phase*O + o; the space-to-depth
# rules write these: 4 phases for a pool, 16 for s2d4's first conv) holds in its unfolded kernel U
# [P*P*O, C, H, W] the same K [O, C, kh', kw'] shifted by (dy, dx) per phase, zeros around it.
# Only K is stored; a shift along an axis of length L by d = 0..P-1 is row d of K zero-extended to
# L + 1, tiled P times, cut to P*L and read as [P, L] (entry (d, u) is K[(u - d) mod (L + 1)]),
# both axes at once; a Gather puts the phases in the conv's order.
PHASES = (2, 4)


def _shifted_copies(k: np.ndarray, p: int, size: tuple[int, int]) -> np.ndarray:
    """[O, C, kh, kw] -> [O, C, P, H, P, W]: k at every shift (dy, dx) < P, by the tile trick."""
    o, c, kh, kw = k.shape
    h, w = size
    v = np.zeros((o, c, h + 1, w + 1), k.dtype)
    v[:, :, :kh, :kw] = k
    t = np.tile(v, (1, 1, p, p))[:, :, : p * h, : p * w]
    return t.reshape(o, c, p, h, p, w)


def _phase_kernel(a: np.ndarray) -> tuple[np.ndarray, int, int, np.ndarray, tuple[int, int]] | None:
    """(K, P, space-to-depth block b, phase order, (dy0, dx0)) if `a` is P x P shifted copies of
    one kernel K (after unfolding a b x b space-to-depth input), else None; the smallest K found."""
    best = None
    if a.ndim != 4:
        return None
    m, cb, kh, kw = a.shape
    for b in (b for b in (1, *S2D_BLOCKS) if cb % (b * b) == 0):
        u = _s2d_unfold(a, b) if b > 1 else a
        h, w = u.shape[2:]
        for p in (p for p in PHASES if m % (p * p) == 0 and m > p * p):
            o = m // (p * p)
            ph = u.reshape(p * p, o, *u.shape[1:])
            boxes = []
            for j in range(p * p):
                nz = ph[j].any(axis=(0, 1))
                if not nz.any():
                    break
                rows, cols = np.flatnonzero(nz.any(axis=1)), np.flatnonzero(nz.any(axis=0))
                boxes.append((rows[0], rows[-1], cols[0], cols[-1]))
            if len(boxes) != p * p:
                continue
            y0, x0 = min(x[0] for x in boxes), min(x[2] for x in boxes)
            shifts = [(r0 - y0, c0 - x0) for r0, _, c0, _ in boxes]
            if sorted(shifts) != [(dy, dx) for dy in range(p) for dx in range(p)]:
                continue
            j0 = shifts.index((0, 0))
            r0, r1, c0, c1 = boxes[j0]
            k = ph[j0][:, :, r0 : r1 + 1, c0 : c1 + 1]
            if k.shape[2] + y0 + p - 1 > h or k.shape[3] + x0 + p - 1 > w:
                continue
            order = np.array([dy * p + dx for dy, dx in shifts])
            if not np.array_equal(_rebuild_phases(k, p, b, order, (y0, x0), a.shape), a):
                continue
            if best is None or k.size < best[0].size:
                best = (k, p, b, order, (int(y0), int(x0)))
    return best


def _rebuild_phases(
    k: np.ndarray, p: int, b: int, order: np.ndarray, at: tuple[int, int], shape: tuple[int, ...]
) -> np.ndarray:
    """numpy of what _pack_phases' nodes compute (the check that they rebuild the weight)."""
    m, cb, kh, kw = shape
    kp = np.pad(k, ((0, 0), (0, 0), (at[0], 0), (at[1], 0)))
    t = _shifted_copies(kp, p, (kh * b, kw * b))  # [O, C, P, H, P, W]
    o, c = k.shape[:2]
    t = t.reshape(o, c, p, kh, b, p, kw, b).transpose(2, 5, 0, 4, 7, 1, 3, 6)  # [P, P, O, b, b, C, kh, kw]
    return t.reshape(p * p, o, cb, kh, kw)[order].reshape(shape)


def _pack_phases(
    g: Graph, t: Any, a: np.ndarray, k: np.ndarray, p: int, b: int, order: np.ndarray, at: tuple[int, int]
) -> bool:
    """Store K; Pad -> Tile -> Slice -> Reshape -> Transpose -> Reshape (-> Gather) -> Reshape rebuild `a`."""
    m, cb, kh, kw = a.shape
    o, c = k.shape[:2]
    h, w = kh * b, kw * b
    kp_h, kp_w = at[0] + k.shape[2], at[1] + k.shape[3]
    pads = np.array([0, 0, at[0], at[1], 0, 0, h + 1 - kp_h, w + 1 - kp_w], np.int64)
    pad, y = _stored_padded(g, t, k, pads, np.zeros((), k.dtype))
    nodes = [pad]

    def add(op: str, ins: list[str], **attrs: Any) -> None:
        nonlocal y
        n, y = g.node(op, [y, *ins], "phases", **attrs)
        nodes.append(n)

    i64 = lambda *v: np.asarray(v, np.int64)  # noqa: E731
    add("Tile", [g.add_const("repeats", i64(1, 1, p, p))])
    add(
        "Slice",
        [
            g.add_const("starts", i64(0, 0)),
            g.add_const("ends", i64(p * h, p * w)),
            g.add_const("axes", i64(2, 3)),
        ],
    )
    add("Reshape", [g.add_const("shape", i64(o, c, p, kh, b, p, kw, b))])
    add("Transpose", [], perm=[2, 5, 0, 4, 7, 1, 3, 6])
    if not np.array_equal(order, np.arange(p * p)):
        add("Reshape", [g.add_const("shape", i64(p * p, o, cb, kh, kw))])
        add("Gather", [g.add_const("phase_order", order.astype(np.int32))], axis=0)
    add("Reshape", [g.add_const("shape", i64(m, cb, kh, kw))])
    _put_first(g, t.name, nodes, y)
    return True


def _pack_padding_one(g: Graph, t: Any) -> bool:
    from onnx import numpy_helper

    a = numpy_helper.to_array(t)
    if a.dtype not in (np.int8, np.uint8, np.int32) or a.ndim == 0:
        return False
    slab, border = _trailing_slab(a), _s2d_border(a)
    removed = 0 if slab is None else slab[2] * (a.size // slab[0][slab[1]])
    phases = _phase_kernel(a) if a.dtype != np.int32 else None
    if (
        phases is not None
        and (a.size - phases[0].size) * a.itemsize >= 4 * PACK_MIN_SAVING  # ~8 nodes
        and a.size - phases[0].size > max(removed, 0 if border is None else a.size - border[1].size)
    ):
        return _pack_phases(g, t, a, *phases)
    if border is not None and a.size - border[1].size > removed:
        return _pack_s2d_border(g, t, a, *border)
    if slab is None:
        return False
    view, ax, k = slab
    if removed * a.itemsize < PACK_MIN_SAVING:
        return False
    pads = np.zeros(2 * len(view), np.int64)
    pads[len(view) + ax] = k
    stored = np.take(a.reshape(view), np.arange(view[ax] - k), axis=ax)
    pad, y = _stored_padded(g, t, stored, pads, a.reshape(-1)[-1])
    nodes = [pad]
    if view != a.shape:
        reshape, y = g.node("Reshape", [y, g.add_const("shape", np.asarray(a.shape, np.int64))], "unpacked")
        nodes.append(reshape)
    _put_first(g, t.name, nodes, y)
    return True


def _swap_initializer(g: Graph, t: Any, stored: np.ndarray) -> str:
    """Initializer `t` goes; `stored` comes in under its name (returned, for the rebuilding node)."""
    g.g.initializer.remove(t)
    g.init.pop(t.name)
    return g.add_const(t.name, np.array(stored, order="C"))  # (ascontiguousarray makes 0-d 1-d)


def _stored_padded(g: Graph, t: Any, stored: np.ndarray, pads: np.ndarray, value: Any) -> tuple[Any, str]:
    """Initializer `t` goes; `stored` (under its name) and a constant Pad of it come instead."""
    ins = [
        _swap_initializer(g, t, stored),
        g.add_const("pads", np.asarray(pads, np.int64)),
        g.add_const("pad_value", np.asarray(value, stored.dtype)),
    ]
    return g.node("Pad", ins, "unpacked", mode="constant")


def _put_first(g: Graph, name: str, nodes: list[Any], y: str) -> None:
    """Uses of `name` read `y` instead, made by `nodes` (of initializers only) at the graph's start."""
    g.rename_uses(name, y)
    rest = list(g.g.node)
    del g.g.node[:]
    g.g.node.extend(nodes + rest)  # inputs are initializers only: first is topologically fine


def _pack_s2d_border(
    g: Graph, t: Any, a: np.ndarray, b: int, crop: np.ndarray, pads: np.ndarray, fill: Any
) -> bool:
    """Store the cropped unfolded kernel; Pad -> Reshape -> Transpose -> Reshape rebuild `a`."""
    m, cb, kh, kw = a.shape
    six = (m, cb // (b * b), kh, b, kw, b)
    perm = [0, 3, 5, 1, 2, 4]
    rebuilt = np.pad(crop, pads.reshape(2, -1).T, constant_values=fill)
    if not np.array_equal(rebuilt.reshape(six).transpose(perm).reshape(a.shape), a):
        return False  # (the unfold is a permutation: cannot happen) never store what does not rebuild
    if (a.size - crop.size) * a.itemsize < PACK_MIN_SAVING:
        return False
    pad, y = _stored_padded(g, t, crop, pads, fill)
    r1, y = g.node("Reshape", [y, g.add_const("shape", np.asarray(six, np.int64))], "unpacked")
    tr, y = g.node("Transpose", [y], "unpacked", perm=perm)
    r2, y = g.node("Reshape", [y, g.add_const("shape", np.asarray(a.shape, np.int64))], "unpacked")
    _put_first(g, t.name, [pad, r1, tr, r2], y)
    return True


def pack_padding(g: Graph) -> str:
    """An integer initializer that ends in a block of equal values along one axis (the channels
    nhwc-pad-channels adds, per pool group) is stored without them, behind a constant Pad (and a
    Reshape); a conv weight over a space-to-depth input whose unfolded kernel has a border of one
    value (a strided conv folded onto that input) is stored cropped, behind Pad -> Reshape ->
    Transpose -> Reshape; a conv weight whose output channels are P x P shifted copies of one
    kernel (the phases of the space-to-depth rules) is stored as that kernel, behind Pad -> Tile ->
    Slice -> Reshape -> Transpose (-> Gather) -> Reshape. onnxruntime folds these when it loads the model, so the kernels see the
    same weights, and the file is smaller. Exact (the same integers). Applied only where it saves
    bytes overall."""
    before = len(g.model.SerializeToString())
    hits = sum(_pack_padding_one(g, t) for t in list(g.g.initializer))
    if not hits:
        return (
            f"no integer initializer ending in >= {PACK_MIN_SAVING} B of equal values along an axis "
            "or with such a border around its space-to-depth kernel"
        )
    if len(g.model.SerializeToString()) >= before:
        return "storing the padding compactly would not make the file smaller"
    return ""


def _is_uint8(g: Graph, name: str) -> bool:
    """A uint8 graph input, a Cast to uint8, or one of those through layout-only ops (or the
    uint8 Pad uint8-input keeps where the pads are not whole blocks)."""
    from onnx import TensorProto

    inp = next((v for v in g.g.input if v.name == name), None)
    if inp is not None:
        return inp.type.tensor_type.elem_type == TensorProto.UINT8
    p = g.producer(name)
    if p is None:
        return False
    if p.op_type == "Cast":
        return g.attr(p, "to") == TensorProto.UINT8
    return (
        p.op_type in ("Reshape", "Transpose", "Pad")
        and p.domain in ("", "ai.onnx")
        and _is_uint8(g, p.input[0])
    )


def _uint8_transpose_one(g: Graph, c1: Any) -> bool:
    from onnx import TensorProto

    if c1.op_type != "Cast" or g.attr(c1, "to") != TensorProto.FLOAT or not _is_uint8(g, c1.input[0]):
        return False
    t = g.only_consumer(c1.output[0], "Transpose")
    c2 = t and g.only_consumer(t.output[0], "Cast")
    if c2 is None or g.attr(c2, "to") != TensorProto.UINT8:
        return False
    new, y = g.node("Transpose", [c1.input[0]], "u8t", perm=list(g.attr(t, "perm")))
    g.rename_uses(c2.output[0], y)
    g.replace([c1, t, c2], [new])
    return True


def uint8_transpose(g: Graph) -> str:
    """The input reorder uint8-input writes as Cast(float) -> Transpose -> Cast(uint8) (bytes
    round-trip exactly) becomes one uint8 Transpose: two nodes fewer per call, faster with one
    thread (aarch64 cortex-a76: -2 % instructions for lenet_pool), but onnxruntime 1.32 splits a
    1-byte Transpose into one thread-pool task per inner block, so with 2+ threads it is much
    slower (see _byte_transpose). Not a default pass: the search tries it on its one-thread choice."""
    hits = _each_match(g, _uint8_transpose_one)
    return "" if hits else "no Cast(float) -> Transpose -> Cast(uint8) of the uint8 input"


NARROW_MIN_SAVING = 16  # bytes: a Cast node (or Expand + its shape) costs ~25-60
NARROWER = (np.int8, np.int16)
# Inputs that take one value for every channel as well as one per channel (ONNX QLinearConv: "a
# scalar or a 1-D tensor" zero point; onnxruntime requires the per-channel values to be equal).
SCALAR_OK = {("QLinearConv", 5)}


def _users(g: Graph, name: str) -> list[tuple[str, int]]:
    return [(n.op_type, k) for n in g.g.node for k, i in enumerate(n.input) if i == name]


def _behind(g: Graph, t: Any, stored: np.ndarray, op: str, extra: list[str], **attrs: Any) -> None:
    """Replace initializer `t` by `op(stored, *extra)`, a constant node onnxruntime folds at load."""
    name = t.name
    node, y = g.node(op, [_swap_initializer(g, t, stored), *extra], "narrow", **attrs)
    _put_first(g, name, [node], y)


def _narrow_one(g: Graph, t: Any) -> bool:
    """One initializer: all-equal -> a scalar (where its users take one) or Expand of it;
    int32 whose values fit -> int8/int16 behind a Cast; float32 whose every value float16 holds
    exactly (per-channel scales after quantize.scales) -> float16 behind a Cast."""
    from onnx import TensorProto, numpy_helper

    a = numpy_helper.to_array(t)
    if a.size < 2 or t.name in {i.name for i in g.g.input}:
        return False
    if a.dtype == np.float32:
        h = a.astype(np.float16)
        if not (np.isfinite(h).all() and np.array_equal(h.astype(np.float32), a, equal_nan=False)):
            return False
        if 2 * a.size < NARROW_MIN_SAVING:
            return False
        _behind(g, t, h, "Cast", [], to=TensorProto.FLOAT)
        return True
    if a.dtype.kind not in "iu":
        return False
    flat = a.reshape(-1)
    if (flat == flat[0]).all():
        one = np.asarray(flat[0], a.dtype)
        if a.ndim == 1 and all(u in SCALAR_OK for u in _users(g, t.name)):
            t.CopyFrom(numpy_helper.from_array(one, t.name))
            return True
        if a.nbytes - one.nbytes - 8 * a.ndim >= 2 * NARROW_MIN_SAVING:
            _behind(g, t, one, "Expand", [g.add_const("shape", np.asarray(a.shape, np.int64))])
            return True
        return False
    if a.dtype != np.int32:
        return False
    lo, hi = int(a.min()), int(a.max())
    to = next((d for d in NARROWER if np.iinfo(d).min <= lo and hi <= np.iinfo(d).max), None)
    if to is None or a.size * (4 - np.dtype(to).itemsize) < NARROW_MIN_SAVING:
        return False
    _behind(g, t, a.astype(to), "Cast", [], to=TensorProto.INT32)
    return True


def _merge_equal_initializers(g: Graph) -> int:
    """Initializers with the same type, shape and values become one (ORT's passes leave copies)."""
    from onnx import numpy_helper

    first: dict[tuple[str, tuple[int, ...], bytes], str] = {}
    merged = 0
    for t in list(g.g.initializer):
        a = numpy_helper.to_array(t)
        key = (a.dtype.str, a.shape, a.tobytes())
        if key in first:
            g.rename_uses(t.name, first[key])
            merged += 1
        else:
            first[key] = t.name
    g.prune()
    return merged


def _final_size(model: Any) -> int:
    """Bytes once the stage has given every tensor its short name and dropped node names (the
    passes' own names are longer, and would count against each added node)."""
    return compact_names(model, node_names=False).ByteSize()


def narrow_constants(g: Graph) -> str:
    """Constants stored in fewer bytes, rebuilt by constant nodes onnxruntime folds when it
    loads the model (the kernels see the same tensors; exact): an int32 bias whose values fit int16
    (or int8) is stored narrow behind a Cast; float32 values that float16 holds exactly (the
    per-channel weight scales quantize.scales rounds) as float16; a per-channel zero point whose channels are all equal
    becomes one value (a scalar where the op takes one, QLinearConv's weight zero point; else an
    Expand of it); identical initializers are merged. Applied only where it saves bytes overall."""
    before = _final_size(g.model)
    hits = 0
    for name in [t.name for t in g.g.initializer]:  # each kept only if the file shrinks (a Cast ~35 B)
        undo, size = g.model.SerializeToString(), _final_size(g.model)
        if _narrow_one(g, g.init[name]):
            if _final_size(g.model) < size:
                hits += 1
            else:
                g.model.ParseFromString(undo)
                g.__init__(g.model, g.shapes)
    hits += _merge_equal_initializers(g)
    if not hits:
        return "no initializer that fits a narrower type, repeats one value, or is a copy"
    if _final_size(g.model) >= before:
        return "storing the constants narrower would not make the file smaller"
    return ""


# Attributes whose absence the ONNX operator docs define but whose schema records no default value
# ("If not present, the stride defaults to 1 along each spatial axis"): all ones / all zeros.
IMPLICIT_DEFAULTS = {"dilations": 1, "strides": 1, "pads": 0}
IMPLICIT_OPS = {
    ("", "Conv"),
    ("", "ConvInteger"),
    ("", "QLinearConv"),
    (MS, "QLinearConv"),
    ("", "MaxPool"),
    ("", "AveragePool"),
    (MS, "NhwcMaxPool"),
    (MS, "QLinearAveragePool"),
}


@functools.cache
def _schemas() -> dict[tuple[str, str], list[Any]]:
    """Every operator schema onnxruntime registers (ai.onnx and its contrib domains), by op."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ortc

    by: dict[tuple[str, str], list[Any]] = {}
    for s in ortc.get_all_operator_schema():
        by.setdefault((s.domain or "", s.name), []).append(s)
    return by


def _default(schema: Any, name: str) -> Any:
    """The AttributeProto a schema gives as `name`'s default, or None."""
    from onnx import AttributeProto

    a = schema.attributes.get(name)
    raw = getattr(a, "_default_value", b"") if a is not None else b""
    if not raw:
        return None
    d = AttributeProto()
    d.ParseFromString(raw)
    return d if d.type else None


def _is_default(schema: Any, node: Any, a: Any) -> bool:
    from onnx import AttributeProto, helper

    d = _default(schema, a.name)
    value = helper.get_attribute_value(a)
    if d is not None:
        return d.type == a.type and helper.get_attribute_value(d) == value
    fill = IMPLICIT_DEFAULTS.get(a.name)
    if fill is None or (node.domain or "", node.op_type) not in IMPLICIT_OPS:
        return False
    if a.type != AttributeProto.INTS or not value or any(v != fill for v in value):
        return False
    auto = next((helper.get_attribute_value(b) for b in node.attribute if b.name == "auto_pad"), b"NOTSET")
    return a.name != "pads" or auto in (b"NOTSET", "NOTSET")


# Convolutions whose absent kernel_shape the docs define as "inferred from input W": weight slot.
KERNEL_FROM_W = {("", "Conv"): 1, ("", "ConvInteger"): 1, ("", "QLinearConv"): 3, (MS, "QLinearConv"): 3}


def _kernel_from_w(g: Graph, node: Any, a: Any) -> bool:
    """kernel_shape equal to the spatial dimensions of the weight (known from the probe run)."""
    from onnx import helper

    slot = KERNEL_FROM_W.get((node.domain or "", node.op_type))
    if a.name != "kernel_shape" or slot is None or len(node.input) <= slot:
        return False
    name = node.input[slot]
    w = tuple(g.init[name].dims) if name in g.init else g.shapes.get(name)
    return w is not None and list(w[2:]) == list(helper.get_attribute_value(a))


def strip_defaults(g: Graph) -> str:
    """Say less where the meaning is the same: attributes equal to their default (from the
    operator schemas onnxruntime registers, for the opset version the model imports; plus the
    all-ones strides/dilations and all-zero pads that the ONNX docs define for absent attributes of
    convolutions and pools, and a convolution's kernel_shape, which they define as inferred from W)
    and opset imports of domains no node uses. Onnxruntime reads the same graph either way."""
    try:
        schemas = _schemas()
    except (ImportError, AttributeError) as e:
        return f"onnxruntime does not expose its operator schemas here ({e})"
    version = {o.domain or "": o.version for o in g.model.opset_import}
    dropped = 0
    for n in g.g.node:
        domain = n.domain or ""
        fits = [s for s in schemas.get((domain, n.op_type), []) if s.since_version <= version.get(domain, 0)]
        if not fits:
            continue
        schema = max(fits, key=lambda s: s.since_version)
        keep = [a for a in n.attribute if not (_is_default(schema, n, a) or _kernel_from_w(g, n, a))]
        if len(keep) < len(n.attribute):
            dropped += len(n.attribute) - len(keep)
            del n.attribute[:]
            n.attribute.extend(keep)
    used = {""} | {n.domain or "" for n in g.g.node}
    used |= {n.domain or "" for f in g.model.functions for n in f.node} | {
        f.domain for f in g.model.functions
    }
    keep_ops = [o for o in g.model.opset_import if (o.domain or "") in used]
    unused = len(g.model.opset_import) - len(keep_ops)
    if unused:
        del g.model.opset_import[:]
        g.model.opset_import.extend(keep_ops)
    if not dropped and not unused:
        return "no attribute at its default and no unused opset import"
    return ""


PASSES: dict[str, Callable[[Graph], str]] = {
    "uint8-input": uint8_input,
    "nhwc-group-max": nhwc_group_max,
    "nhwc-flatten-gemm": nhwc_flatten_gemm,
    "nhwc-pad-channels": nhwc_pad_channels,
    "fold-weight-dq": fold_weight_dq,
    "pack-padding": pack_padding,
    "narrow-constants": narrow_constants,
    "strip-defaults": strip_defaults,
    "uint8-transpose": uint8_transpose,
}
ONE_THREAD_PASSES = ("uint8-transpose",)  # tried by the search on top of the defaults, kept if faster


def ort_level3(src: Path, dst: Path) -> Any:
    """ORT's own optimised graph (QDQ fused, NHWC), without the machine-specific NCHWc layout."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(dst)
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    ort.InferenceSession(
        str(src), so, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"]
    )
    model = onnx.load(str(dst))
    odd = sorted({n.domain for n in model.graph.node} - {"", "ai.onnx", MS})
    if odd:
        raise ValueError(f"ORT's optimised graph uses machine-specific domains {odd}")
    return model


def run_shapes(model: Any, x: np.ndarray) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from one run (the contrib ops have no ONNX shape inference)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in m.graph.node:
        for o in n.output:
            if o and o not in have:
                m.graph.output.append(onnx.ValueInfoProto(name=o))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = s.run(None, {m.graph.input[0].name: x})
    shapes = {o.name: tuple(v.shape) for o, v in zip(s.get_outputs(), outs, strict=True)}
    return {m.graph.input[0].name: tuple(x.shape), **shapes}


def apply_ort_passes(
    model: Any, names: tuple[str, ...], probe: np.ndarray
) -> tuple[Any, list[dict[str, Any]]]:
    """Run the passes in order on a copy; a pass that refuses leaves the graph as it was."""
    import onnx

    from lenet_edge.runtime.runner import as_native

    log = []
    for name in names:
        trial = onnx.ModelProto()
        trial.CopyFrom(model)
        dtype = (
            np.uint8
            if trial.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
            else np.float32
        )
        why = PASSES[name](Graph(trial, run_shapes(trial, as_native(probe, dtype))))
        if not why:
            onnx.checker.check_model(trial)
            model = trial
        log.append({"pass": name, "applied": not why, **({"not_applied": why} if why else {})})
    return model, log


# --- the stage: <model>.int8.<variant>.qdq.onnx -> <model>.int8.<variant>.ort.onnx ------------------

DEFAULT_PASSES = tuple(p for p in PASSES if p not in ONE_THREAD_PASSES)
# --goal size leaves out the passes that spend bytes for speed: nhwc-pad-channels stores zero
# channels (padded weights, scales, biases and a Pad of the next weight; ~170 B in lenet_stride).
BYTES_FOR_SPEED = ("nhwc-pad-channels",)
GOALS = {
    "speed": DEFAULT_PASSES,
    "size": tuple(p for p in DEFAULT_PASSES if p not in BYTES_FOR_SPEED),
}


def ort_path(onnx_dir: Path, model: str, variant: str) -> Path:
    return Path(onnx_dir) / f"{model}.int8.{variant}.ort.onnx"


def source_sha256() -> str:
    from lenet_edge.runtime.files import code_sha256

    return code_sha256("optimize.ort_int8")


def _source(onnx_dir: Path, model: str, variant: str) -> tuple[Path, dict[str, Any]]:
    """The checked QDQ model and its quantize record (refused if stale, stock, or failing tolerances)."""
    from lenet_edge.quantize.checks import int8_failures, tolerances_for
    from lenet_edge.runtime.errors import ConfigError
    from lenet_edge.runtime.files import read_json, sha256_file

    src = Path(onnx_dir) / f"{model}.int8.{variant}.qdq.onnx"
    rec_path = quantize_record_path(src)
    if not src.is_file() or not rec_path.is_file():
        raise ConfigError(
            f"{src}: missing (or its record is); run `lenet-edge optimize --variant {variant}` and "
            f"`lenet-edge quantize --variant {variant}` first (`make quantize-s2d` / `make quantize-fold`)"
        )
    rec = read_json(rec_path)
    if not isinstance(rec, dict) or rec.get("onnx_sha256") != sha256_file(src):
        raise ConfigError(f"{rec_path}: does not describe {src.name} (re-run the quantize stage)")
    fails = int8_failures(rec, tolerances_for(model))
    if rec.get("stock") or fails:
        raise ConfigError(f"{rec_path}: not a checked lenet-edge INT8 model ({'; '.join(fails) or 'stock'})")
    return src, rec


def is_up_to_date(onnx_dir: Path, model: str, variant: str, goal: str = "speed") -> bool:
    import onnxruntime

    from lenet_edge.runtime.files import read_json, sha256_file

    out = ort_path(onnx_dir, model, variant)
    src = Path(onnx_dir) / f"{model}.int8.{variant}.qdq.onnx"
    if not (out.is_file() and quantize_record_path(out).is_file() and src.is_file()):
        return False
    try:
        t = read_json(quantize_record_path(out)).get("ort_target", {})
    except Exception:
        return False
    return (
        t.get("source_sha256") == sha256_file(src)
        and t.get("goal", "speed") == goal
        and t.get("code_sha256") == source_sha256()
        and t.get("onnxruntime") == onnxruntime.__version__
        and read_json(quantize_record_path(out)).get("onnx_sha256") == sha256_file(out)
    )


# Integer rewrites are exact: the ORT target gives the source's logits to float precision. A recipe
# with FP32-compute layers (weight_only) is exact only up to float summation order: onnxruntime
# multiplies by a constant (prepacked) weight in another order than by one a DequantizeLinear makes
# on every call (lenet_pool, all FCs weight-only: 1.1e-5). 0.05 still catches a wrong permutation
# or scale (those move logits by whole units) and top-1 must match on every image besides.
EXACT_LOGIT_LIMIT = 1e-5
FLOAT_LAYERS_LOGIT_LIMIT = 0.05
REQUANTIZED_LOGIT_LIMIT = 0.5


def logit_limit(src_rec: dict[str, Any], model: Any = None) -> float:
    """How far the ORT target's logits may be from its QDQ source's. Integer graphs: exact (float
    noise only). Layers computing in FP32 (`weight_only`): float summation order differs (a
    prepacked constant weight against one made on every call), ~1e-5. If such a layer feeds an
    INT8 one (a QuantizeLinear left inside the graph), that noise can move a value across a rounding
    boundary of the INT8 grid: one step of that activation's scale (0.03-0.06 in lenet_pool),
    carried to the logits by the layers after it (0.05-0.33 measured); top-1 must still be
    identical on every image."""
    if not src_rec.get("recipe", {}).get("weight_only"):
        return EXACT_LOGIT_LIMIT
    if model is not None and any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        return REQUANTIZED_LOGIT_LIMIT
    return FLOAT_LAYERS_LOGIT_LIMIT


def per_call_ops(model: Any) -> list[str]:
    """The op types that run on every call: not those whose inputs are all constant (pack-padding's
    and narrow-constants' Pad, Reshape, Transpose, Cast, Expand of initializers, which onnxruntime
    folds when it loads the model)."""
    const = {t.name for t in model.graph.initializer}
    ops = []
    for n in model.graph.node:
        if all(i in const for i in n.input if i):
            const.update(n.output)
        else:
            ops.append(n.op_type)
    return ops


# What the ORT target's own metadata keeps; the rest of the provenance (checkpoint, FP32 file and
# calibration hashes, seed, accuracies) is its QDQ source's metadata and record, named by sha256.
TARGET_METADATA = ("model", "precision", "recipe", "variant", "input_contract")


def _describe(model: Any, src_rec: dict[str, Any]) -> Any:
    """Producer, a one-line doc string, an input contract that says what this file takes (the
    source's says float32; uint8-input makes it bytes only) and its provenance as one link: the QDQ
    source's file name and sha256 (that file's metadata and record carry the checkpoint, FP32 and
    calibration hashes and the accuracies: ~600 bytes less here, 1 % of the file)."""
    from onnx import TensorProto

    from lenet_edge.export.onnx_export import set_metadata
    from lenet_edge.runtime.contract import CONTRACT_TEXT, contract_text

    model.producer_name = "lenet-edge optimize.ort_int8"
    model.producer_version = ""
    name = src_rec.get("model", "")
    model.graph.name = name or "g"
    inp = model.graph.input[0]
    dtype = TensorProto.DataType.Name(inp.type.tensor_type.elem_type).lower()
    meta = {p.key: p.value for p in model.metadata_props}
    model.doc_string = f"lenet-edge {name}, INT8 for ONNX Runtime; input '{inp.name}' {dtype}."
    contract = meta.get("input_contract")
    if dtype == "uint8" and contract == CONTRACT_TEXT:
        contract = contract_text("uint8")
    elif dtype == "uint8" and contract:
        contract = f"{contract} This file takes uint8 input only."
    keep = {k: meta[k] for k in TARGET_METADATA if k in meta}
    if contract:
        keep["input_contract"] = contract
    del model.metadata_props[:]
    set_metadata(
        model, {**keep, "source": f"{src_rec.get('onnx', '')} sha256:{src_rec.get('onnx_sha256', '')}"}
    )
    return model


def build_ort_model(
    src: Path,
    src_rec: dict[str, Any],
    out: Path,
    pixels: Any,
    passes: tuple[str, ...] = DEFAULT_PASSES,
    goal: str = "speed",
) -> dict[str, Any]:
    """The ORT target of one checked QDQ file: build, check (identical top-1 and |Δlogit| within
    `logit_limit` on `pixels`), write `out` + its record; nothing is written if a check fails."""
    import time

    import onnx
    import onnxruntime

    from lenet_edge.export.onnx_export import set_metadata
    from lenet_edge.runtime.errors import ConversionError
    from lenet_edge.runtime.files import owned_temp_dir, sha256_bytes, write_bytes_atomic, write_json_atomic
    from lenet_edge.runtime.numeric import max_abs_diff
    from lenet_edge.runtime.runner import TUNED_FOR_THREADS, OnnxRunner

    t0 = time.perf_counter()
    model = src_rec.get("model", src.name)
    with owned_temp_dir("ort-int8") as tmp:
        level3 = ort_level3(src, tmp / "level3.onnx")
    final, log = apply_ort_passes(level3, passes, pixels[:2])
    if not any(e["applied"] for e in log):
        raise ConversionError(
            f"{src.name}: no ORT-target pass applies ({'; '.join(e['not_applied'] for e in log)})"
        )
    final = _describe(compact_names(final, node_names=False), src_rec)
    one_thread = [e["pass"] for e in log if e["applied"] and e["pass"] in ONE_THREAD_PASSES]
    if one_thread:  # the runner says so when a session gives it more intra-op threads
        set_metadata(final, {TUNED_FOR_THREADS: f"1 ({', '.join(one_thread)})"})
    onnx.checker.check_model(final)
    data = final.SerializeToString()
    try:
        ref = OnnxRunner(src).predict(pixels)
        got = OnnxRunner(data).predict(pixels)
    except Exception as e:
        raise ConversionError(f"{model}: the ORT-target model does not run: {e}") from e
    diff = max_abs_diff(ref, got)
    same = int((ref.argmax(1) == got.argmax(1)).sum())
    limit = logit_limit(src_rec, final)
    if not diff <= limit or same != len(ref):
        raise ConversionError(
            f"{model}: the ORT-target model differs from {src.name} on {len(ref)} test images: "
            f"max |Δlogit| {diff:.3g} (limit {limit:g}), top-1 differs on {len(ref) - same}"
        )
    params = src_rec.get("params")
    record = {
        **src_rec,
        "onnx": out.name,
        "onnx_sha256": sha256_bytes(data),
        "onnx_bytes": len(data),
        "bytes_per_param": round(len(data) / params, 4) if params else None,
        "size_ratio_vs_fp32": round(len(data) / src_rec["fp32"]["onnx_bytes"], 4),
        "ort_target": {
            "source": src.name,
            "source_sha256": src_rec["onnx_sha256"],
            "method": "onnxruntime level-3 graph without NCHWc, then lenet-edge passes",
            "goal": goal,
            "passes": log,
            "nodes": dict(sorted(Counter(n.op_type for n in final.graph.node).items())),
            "nodes_per_call": dict(sorted(Counter(per_call_ops(final)).items())),
            "input_dtype": "uint8"
            if final.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
            else "float32",
            "check": {
                "images": len(ref),
                "max_abs_logit_diff_vs_source": diff,
                "limit": limit,
                "top1_identical": same,
            },
            "onnxruntime": onnxruntime.__version__,
            "code_sha256": source_sha256(),
            "seconds": round(time.perf_counter() - t0, 2),
        },
    }
    write_bytes_atomic(out, data)
    write_json_atomic(quantize_record_path(out), record)
    return record


def make_ort_model(
    onnx_dir: str | Path,
    model: str,
    variant: str = "s2d",
    data_dir: str | Path | None = None,
    goal: str = "speed",
) -> dict[str, Any]:
    """`make quantize-ort` for one model: <model>.int8.<variant>.qdq.onnx (checked, fresh) -> its
    ORT target (GOALS[goal]'s passes), checked on all test images."""
    from lenet_edge.runtime.contract import to_pixels
    from lenet_edge.runtime.mnist import load_split

    onnx_dir = Path(onnx_dir)
    src, src_rec = _source(onnx_dir, model, variant)
    pixels = to_pixels(load_split("test", data_dir).images)
    return build_ort_model(src, src_rec, ort_path(onnx_dir, model, variant), pixels, GOALS[goal], goal)


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "optimize.ort_int8",
        description="ONNX Runtime target: turn a checked QDQ INT8 model into an integer NHWC graph "
        "(uint8 pixels in, no layout round trips), check it gives the same logits on every test image, "
        "and write <model>.int8.<variant>.ort.onnx + its record.",
    )
    add_model_flags(p)
    p.add_argument("--onnx-dir", type=path_arg, default=Path("build/onnx"), help="default build/onnx")
    p.add_argument(
        "--variant", type=name_part, default="s2d", help="which <model>.int8.<variant>.qdq.onnx (default s2d)"
    )
    p.add_argument("--data-dir", type=path_arg, default=None)
    p.add_argument(
        "--goal",
        choices=sorted(GOALS),
        default="speed",
        help="speed: every pass (default); size: leave out those that store bytes for speed "
        f"({', '.join(BYTES_FOR_SPEED)})",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = p.parse_args(argv)
    for name in selected(args.model, args.workflow):
        out = ort_path(args.onnx_dir, name, args.variant)
        if not args.force and is_up_to_date(args.onnx_dir, name, args.variant, args.goal):
            print(f"{out}: up to date (--force rebuilds)")
            continue
        rec = make_ort_model(args.onnx_dir, name, args.variant, args.data_dir or data_source(name), args.goal)
        t = rec["ort_target"]
        did = ", ".join(e["pass"] for e in t["passes"] if e["applied"])
        skip = "; ".join(f"{e['pass']}: {e['not_applied']}" for e in t["passes"] if not e["applied"])
        print(
            f"{name}: {out.name} ({sum(t['nodes'].values())} nodes, {sum(t['nodes_per_call'].values())} run "
            f"per call, {t['input_dtype']} input, {rec['onnx_bytes']:,} B, {rec['bytes_per_param']} B/param) "
            f"applied {did}"
            + (f"; not applied: {skip}" if skip else "")
            + f"; max |Δlogit| vs {t['source']} {t['check']['max_abs_logit_diff_vs_source']:.1e}, "
            f"top-1 identical {t['check']['top1_identical']}/{t['check']['images']}"
        )
    return 0


if __name__ == "__main__":
    import sys

    from lenet_edge.runtime.cli import run

    sys.exit(run(main))

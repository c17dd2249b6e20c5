"""ONNX graph -> differentiable torch module (for zero-shot synthesis, :mod:`zsq_tvm.synthesize`).

Synthesis back-propagates the eq. 2 loss through the *float* model to its mel input, so it needs
the model as a torch module with its BatchNorm layers intact.  :class:`OnnxTorch` interprets the
ONNX graph eagerly with torch ops: initializers become buffers, every ``BatchNormalization`` node
becomes a real :class:`torch.nn.BatchNorm1d`-like module (``.bns``, in graph order; forward hooks
see its input) that always normalises with its running statistics, and shape plumbing
(Shape/Gather/Slice/Concat/…) runs on int64 tensors, so dynamic-time exports work for any T.

It covers the ops the exports of our nets contain (QuartzNet/Jasper: Conv, BatchNormalization,
Relu, Add, Identity, Transpose; Conformer: MatMul, LayerNormalization, Softmax, Sigmoid, Split,
Pad, Slice, ScatterND, Range, … ) plus a few common ones; anything else is refused up front,
all names at once.  (``onnx2torch`` would pull in torchvision, which must match our pinned torch.)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OnnxTorch", "SUPPORTED", "onnx_to_torch"]

_DT = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 6: torch.int32, 7: torch.int64, 9: torch.bool,
       10: torch.float16, 11: torch.float64}


class OnnxBatchNorm(nn.BatchNorm1d):
    """Inference BatchNorm (running statistics) for any rank >= 2, channels on axis 1."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"BatchNormalization needs rank >= 2, got {x.dim()}")

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _attrs(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.TENSOR:
            v = torch.from_numpy(onnx.numpy_helper.to_array(v).copy())
        elif isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _binary(fn):
    return lambda a, x, y: fn(x, y)


def _div(a, x, y):
    if x.is_floating_point() or y.is_floating_point():
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


def _conv(a, x, w, b=None):
    nd = x.dim() - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError("Conv auto_pad=SAME_* is not supported")
    pads = a.get("pads", [0] * (2 * nd))
    if pads[:nd] == pads[nd:]:
        pad = pads[:nd]
    else:  # asymmetric: F.pad takes (last-dim begin, last-dim end, ...)
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (pads[i], pads[i + nd])])
        pad = [0] * nd
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return conv(x, w, b, stride=a.get("strides", [1] * nd), padding=pad, dilation=a.get("dilations", [1] * nd),
                groups=a.get("group", 1))


def _reshape(a, x, shape):
    s = _ints(shape)
    if not a.get("allowzero", 0):
        s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
    return x.reshape(s)


def _unsqueeze(a, x, axes=None):
    axes = _ints(axes) if axes is not None else a["axes"]
    r = x.dim() + len(axes)
    for ax in sorted(v % r for v in axes):
        x = x.unsqueeze(ax)
    return x


def _squeeze(a, x, axes=None):
    axes = _ints(axes) if axes is not None else a.get("axes")
    if axes is None:
        return x.squeeze()
    for ax in sorted((v % x.dim() for v in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def _gather(a, x, idx):
    ax = a.get("axis", 0) % x.dim()
    i = idx.long()
    i = torch.where(i < 0, i + x.shape[ax], i)
    return x.index_select(ax, i.reshape(-1)).reshape(x.shape[:ax] + i.shape + x.shape[ax + 1:])


def _slice(a, x, starts, ends, axes=None, steps=None):
    st, en = _ints(starts), _ints(ends)
    ax = _ints(axes) if axes is not None else list(range(len(st)))
    sp = _ints(steps) if steps is not None else [1] * len(st)
    for s, e, d, k in zip(st, en, ax, sp):
        d %= x.dim()
        n = x.shape[d]
        s, e = max(min(s, 2 ** 62), -2 ** 62), max(min(e, 2 ** 62), -2 ** 62)
        idx = range(n)[slice(s, e, k)]  # python slicing == ONNX clamping semantics
        if k == 1:
            x = x.narrow(d, idx.start, len(idx)) if len(idx) else x.narrow(d, 0, 0)
        else:
            x = x.index_select(d, torch.tensor(list(idx), dtype=torch.long))
    return x


def _pad(a, x, pads=None, value=None, axes=None):
    p = _ints(pads) if pads is not None else a["pads"]
    mode = a.get("mode", "constant")
    ax = [v % x.dim() for v in _ints(axes)] if axes is not None else list(range(x.dim()))
    n = len(ax)
    full = [0] * (2 * x.dim())
    for j, d in enumerate(ax):
        full[d], full[d + x.dim()] = p[j], p[j + n]
    tp = [q for d in reversed(range(x.dim())) for q in (full[d], full[d + x.dim()])]
    v = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
    return F.pad(x, tp, mode=mode, value=v) if mode == "constant" else F.pad(x, tp, mode=mode)


def _split(a, x, split=None, n_out=1):
    ax = a.get("axis", 0)
    if split is not None:
        sizes = _ints(split)
    elif "split" in a:
        sizes = list(a["split"])
    else:
        k = a.get("num_outputs", n_out)
        c = -(-x.shape[ax] // k)
        sizes = [c] * (k - 1) + [x.shape[ax] - c * (k - 1)]
    return list(torch.split(x, sizes, dim=ax))


def _scatter_nd(a, data, idx, upd):
    k = idx.shape[-1]
    i = idx.long().reshape(-1, k)
    return data.index_put(tuple(i.unbind(-1)), upd.reshape((-1,) + tuple(data.shape[k:])))


def _layer_norm(a, x, w, b=None):
    ax = a.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[ax:], w, b, a.get("epsilon", 1e-5))


def _gemm(a, x, y, c=None):
    x = x.t() if a.get("transA", 0) else x
    y = y.t() if a.get("transB", 0) else y
    out = a.get("alpha", 1.0) * (x @ y)
    return out if c is None else out + a.get("beta", 1.0) * c


def _constant(a):
    if "value" in a:
        return a["value"]
    for k, dt in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                  ("value_ints", torch.int64)):
        if k in a:
            return torch.tensor(a[k], dtype=dt)
    raise NotImplementedError(f"Constant with {sorted(a)}")


OPS = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div,
    "Pow": _binary(torch.pow), "Equal": _binary(torch.eq), "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt), "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or),
    "Max": lambda a, *xs: torch.stack(torch.broadcast_tensors(*xs)).amax(0),
    "Min": lambda a, *xs: torch.stack(torch.broadcast_tensors(*xs)).amin(0),
    "MatMul": _binary(torch.matmul), "Gemm": _gemm, "Conv": _conv,
    "Relu": lambda a, x: torch.relu(x), "Sigmoid": lambda a, x: torch.sigmoid(x),
    "Tanh": lambda a, x: torch.tanh(x), "Neg": lambda a, x: -x, "Sqrt": lambda a, x: torch.sqrt(x),
    "Exp": lambda a, x: torch.exp(x), "Log": lambda a, x: torch.log(x), "Sin": lambda a, x: torch.sin(x),
    "Cos": lambda a, x: torch.cos(x), "Erf": lambda a, x: torch.erf(x), "Abs": lambda a, x: x.abs(),
    "Reciprocal": lambda a, x: 1.0 / x, "Not": lambda a, x: torch.logical_not(x),
    "Softmax": lambda a, x: torch.softmax(x, a.get("axis", -1)),
    "LogSoftmax": lambda a, x: torch.log_softmax(x, a.get("axis", -1)),
    "LayerNormalization": _layer_norm,
    "Identity": lambda a, x: x, "Dropout": lambda a, x, *_: x,
    "Transpose": lambda a, x: x.permute(a.get("perm", list(reversed(range(x.dim()))))),
    "Reshape": _reshape, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Flatten": lambda a, x: x.reshape(int(np.prod(x.shape[:a.get("axis", 1)])), -1),
    "Shape": lambda a, x: torch.tensor(x.shape[a.get("start", 0):a.get("end", None)], dtype=torch.int64),
    "Gather": _gather, "Slice": _slice, "Pad": _pad, "ScatterND": _scatter_nd,
    "Concat": lambda a, *xs: torch.cat(xs, a["axis"]),
    "Cast": lambda a, x: x.to(_DT[a["to"]]),
    "ConstantOfShape": lambda a, s: (a["value"] if "value" in a else torch.zeros(1)).reshape(()).expand(
        _ints(s)).clone(),
    "Expand": lambda a, x, s: x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(s)))),
    "Range": lambda a, s, e, d: torch.arange(s.item(), e.item(), d.item(), dtype=s.dtype),
    "Where": lambda a, c, x, y: torch.where(c, x, y),
    "ReduceMean": lambda a, x, axes=None: x.mean(
        dim=_ints(axes) if axes is not None else a.get("axes", list(range(x.dim()))),
        keepdim=bool(a.get("keepdims", 1))),
    "Split": _split,
}
SUPPORTED = frozenset(OPS) | {"Constant", "BatchNormalization"}


class OnnxTorch(nn.Module):
    """``OnnxTorch(onnx_model)(mel) -> first graph output``; ``.bns``: the BatchNorm modules."""

    def __init__(self, proto):
        super().__init__()
        from onnx import numpy_helper

        g = proto.graph
        bad = sorted({n.op_type for n in g.node if n.op_type not in SUPPORTED})
        if bad:
            raise NotImplementedError("ONNX ops not supported by zsq's ONNX->torch converter: " + ", ".join(bad))
        self._consts: dict[str, torch.Tensor] = {}
        for t in g.initializer:
            self._consts[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
        self._nodes = []  # (op, attrs, inputs, outputs, bn index or None)
        self.bns = nn.ModuleList()
        self.bn_names: list[str] = []
        for n in g.node:
            a = _attrs(n)
            if n.op_type == "Constant":
                self._consts[n.output[0]] = _constant(a)
                continue
            if n.op_type == "Identity" and n.input[0] in self._consts:  # exporters alias shared weights
                self._consts[n.output[0]] = self._consts[n.input[0]]
                continue
            bi = None
            if n.op_type == "BatchNormalization":
                if a.get("training_mode", 0):
                    raise NotImplementedError(f"BatchNormalization {n.name} has training_mode=1")
                try:
                    sc, b, mu, var = (self._consts[i].float() for i in n.input[1:5])
                except KeyError:
                    raise NotImplementedError(f"BatchNormalization {n.name}: parameters are not constants") from None
                bn = OnnxBatchNorm(mu.numel(), eps=float(a.get("epsilon", 1e-5)))
                with torch.no_grad():
                    bn.weight.copy_(sc), bn.bias.copy_(b), bn.running_mean.copy_(mu), bn.running_var.copy_(var)
                bn.requires_grad_(False)
                bi = len(self.bns)
                self.bns.append(bn)
                self.bn_names.append(n.name or n.output[0])
            self._nodes.append((n.op_type, a, list(n.input), list(n.output), bi))
        inits = set(self._consts)
        self.input_name = next(i.name for i in g.input if i.name not in inits)
        self.output_name = g.output[0].name
        for i, (k, v) in enumerate(self._consts.items()):  # buffers: follow .to(device)
            self.register_buffer(f"c{i}", v, persistent=False)
        self._cnames = list(self._consts)

    def forward(self, x):
        env = {k: getattr(self, f"c{i}") for i, k in enumerate(self._cnames)}
        env[self.input_name] = x
        for op, a, ins, outs, bi in self._nodes:
            args = [env[i] if i else None for i in ins]
            while args and args[-1] is None:
                args.pop()
            if bi is not None:
                res = self.bns[bi](args[0])
            elif op == "Split":
                res = _split(a, *args, n_out=len(outs))
            else:
                res = OPS[op](a, *args)
            if isinstance(res, (list, tuple)):
                for o, r in zip(outs, res):
                    env[o] = r
            else:
                env[outs[0]] = res
        return env[self.output_name]


def onnx_to_torch(model) -> OnnxTorch:
    """Path / bytes / ``ModelProto`` -> :class:`OnnxTorch` in eval mode."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    return OnnxTorch(proto).eval()

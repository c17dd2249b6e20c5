"""Model size and BOPs, computed from the ONNX graph (no TVM build needed).

Conventions (chosen to be comparable with the paper's Table 1):

* **Parameters** are counted after BatchNorm folding: every float initializer feeding a
  Conv/MatMul/Gemm/Add/Mul (weights, biases, …) plus one folded bias per BatchNorm channel;
  BN running statistics and scale/shift themselves are not parameters any more.
* **Size** = parameters × bits / 8 bytes (FP32: 32 bits; quantized: ``wbits`` for all
  parameters, as the paper does — in our artifacts biases are actually int32, see
  ``stored_bytes``).  **1 MB = 10^6 bytes.**  QuartzNet-15x5 (18.89 M folded parameters)
  gives 75.54 MB FP32 / 18.89 MB W8; the paper's 73.81 / 18.45 are 2.3 % lower.  MiB (2^20)
  would be 2.4 % lower than the paper, i.e. neither SI nor binary megabytes reproduce the
  paper exactly; its numbers match "1 MB = 1000 × 1024 bytes" to 0.05 %.
* **BOPs** = Σ over conv/matmul of MACs × b_w × b_a for a 10 s input (1000 mel frames at
  10 ms hop), FP32 = 32 × 32.  An activation × activation matmul (attention) counts
  ``abits × abits``.  QuartzNet-15x5: 9.65 T FP32 (paper 9.48), 0.603 T W8A8 (paper 0.61).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from zsq_tvm.frontend.onnx_import import _maybe_simplify, load_onnx, model_info

__all__ = ["LayerCost", "ModelCost", "analyze_onnx", "size_report", "format_report", "MB", "TEN_SECONDS_FRAMES"]

MB = 10**6
TEN_SECONDS_FRAMES = 1000


@dataclass
class LayerCost:
    name: str
    op: str
    macs: int
    weight_operand: bool  # True: activation x weight; False: activation x activation


@dataclass
class ModelCost:
    params: int
    frames: int
    macs: int
    layers: list[LayerCost] = field(default_factory=list)

    def bops(self, wbits: int = 32, abits: int = 32) -> int:
        return int(sum(l.macs * (wbits if l.weight_operand else abits) * abits for l in self.layers))

    def size_bytes(self, wbits: int = 32) -> float:
        return self.params * wbits / 8

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("layers")
        d["num_layers"] = len(self.layers)
        return d


def _static_proto(proto, frames: int, batch: int = 1):
    import onnx

    info = model_info(proto)
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    shape = [batch, info.features or 64, frames]
    dims = p.graph.input[[i.name for i in p.graph.input].index(info.input_name)].type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = v
    p = _maybe_simplify(p, {info.input_name: shape})
    # drop stale intermediate shapes so inference uses the new T
    del p.graph.value_info[:]
    for o in p.graph.output:
        o.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(p, strict_mode=False, data_prop=True)


def analyze_onnx(model, frames: int = TEN_SECONDS_FRAMES, batch: int = 1) -> ModelCost:
    """Parameters and per-layer MACs of an ONNX CTC model for an input of ``frames`` frames."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else load_onnx(model)[0]
    p = _static_proto(proto, frames, batch)
    g = p.graph
    inits = {t.name: t for t in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    shapes = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for name, t in {**inits, **consts}.items():
        shapes[name] = list(t.dims)

    def shape(name):
        s = shapes.get(name)
        if s is None or any(d is None for d in s):
            raise ValueError(f"cannot infer a static shape for {name!r}")
        return s

    is_weight = lambda name: name in inits or name in consts  # noqa: E731
    bn_inputs: set[str] = set()
    params = 0
    layers: list[LayerCost] = []
    for i, n in enumerate(g.node):
        nm = n.name or f"{n.op_type}_{i}"
        if n.op_type == "BatchNormalization":
            bn_inputs.update(n.input[1:5])
            params += int(np.prod(shape(n.input[1])))  # one folded bias per channel
        elif n.op_type == "Conv":
            out = shape(n.output[0])
            w = shape(n.input[1])
            layers.append(LayerCost(nm, "Conv", int(np.prod(out)) * int(np.prod(w[1:])), True))
        elif n.op_type in ("MatMul", "Gemm"):
            a, b = shape(n.input[0]), shape(n.input[1])
            out = shape(n.output[0])
            k = a[-1]
            if n.op_type == "Gemm" and any(at.name == "transA" and at.i for at in n.attribute):
                k = a[0]
            layers.append(LayerCost(nm, n.op_type, int(np.prod(out)) * int(k),
                                    is_weight(n.input[1]) or is_weight(n.input[0])))
    for name, t in inits.items():
        if name in bn_inputs or t.data_type not in (1, 10, 11, 16):  # float types only
            continue
        if int(np.prod(t.dims)) > 1:
            params += int(np.prod(t.dims))
    return ModelCost(params=params, frames=frames, macs=sum(l.macs for l in layers), layers=layers)


def size_report(cost: ModelCost, wbits: int, abits: int) -> dict:
    """JSON-able numbers for FP32 and for ``wbits``/``abits``."""
    fp32_b, q_b = cost.size_bytes(32), cost.size_bytes(wbits)
    return {
        "params": cost.params,
        "frames": cost.frames,
        "seconds": cost.frames / 100.0,
        "macs": cost.macs,
        "fp32": {"size_bytes": fp32_b, "size_mb": fp32_b / MB, "bops": cost.bops(32, 32),
                 "tbops": cost.bops(32, 32) / 1e12},
        "quantized": {"wbits": wbits, "abits": abits, "size_bytes": q_b, "size_mb": q_b / MB,
                      "bops": cost.bops(wbits, abits), "tbops": cost.bops(wbits, abits) / 1e12},
        "compression": fp32_b / q_b,
        "mb_unit_bytes": MB,
    }


def format_report(rep: dict) -> str:
    q = rep["quantized"]
    f = rep["fp32"]
    extra = ""
    if rep.get("overflow"):  # quantized dirs: tightest accumulator margins (zsq_tvm.core.overflow)
        from zsq_tvm.core.overflow import format_summary

        extra = "\n" + format_summary(rep["overflow"])
    return "\n".join([
        f"parameters       {rep['params'] / 1e6:10.3f} M (BatchNorm folded)",
        f"MACs             {rep['macs'] / 1e9:10.3f} G for {rep['seconds']:g} s ({rep['frames']} frames)",
        f"                 {'FP32':>10} {'W%dA%d' % (q['wbits'], q['abits']):>10}",
        f"size (MB=1e6 B)  {f['size_mb']:10.2f} {q['size_mb']:10.2f}   ({rep['compression']:.2f}x smaller)",
        f"BOPs (T)         {f['tbops']:10.2f} {q['tbops']:10.3f}",
    ]) + extra

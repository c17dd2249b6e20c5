"""Calibration: static per-tensor activation ranges from the float (BN-folded) Relax module.

Paper §2.1: static quantization with clipping ranges pre-computed by running data through the
model; ``minmax`` is the paper's choice (``a = max(|x_min|, |x_max|)``), ``percentile`` clips at
the p-th percentile of ``|x|`` to ignore outliers.  Data can be real mel spectrograms, synthetic
ones (zero-shot, §2.3) or random, as any iterable of ``[B, F, T]`` float arrays.

How: the float module is instrumented (:func:`instrument`) so ``main`` also returns, for every
tensor op result and the input, either its min/max (``minmax``, reduced inside the graph) or the
tensor itself (``percentile``, reduced into a histogram of ``|x|`` here); the module is built once
with ``tvm.compile(..., target="llvm")`` and run with ``relax.VirtualMachine``.

Ranges are keyed by the stable tensor names of :func:`relax_passes._util.tensor_names`
(``"input:mel"``, ``"nn.conv1d#3"``, ``"add#7"``, ...), so the same folded module must be given to
:class:`relax_passes.Quantize`.  The intended call sequence::

    mod = tvm.relax.frontend.onnx.from_onnx(onnx_model, {"mel": (1, 64, T)}, keep_params_in_input=False)
    mod, bn_stats = relax_passes.fold_batchnorm(mod, onnx_model=onnx_model)
    ranges = zsq_tvm.calibrate.calibrate(mod, batches, method="minmax")         # JSON-able dict
    qmod, meta = relax_passes.quantize_module(mod, ranges, wbits=8, abits=8)  # meta: scales, (M, s), overflow
    lowered = relax_passes.lowering.lower(qmod)      # LegalizeOps + fusion (what tvm.compile does)
    relax_passes.IntegerOnlyCheck()(lowered)    # raises naming any float PrimFunc
    ex = tvm.compile(qmod, target=relax_passes.lowering.host_target())
"""

from __future__ import annotations

import numpy as np
import tvm
from tqdm.auto import tqdm
from tvm import relax

from relax_passes._util import bindings, dtype_of, main_function, resolve_const, shape_of, tensor_names
from relax_passes.lowering import lower
from zsq_tvm.core.errors import CalibrationError

__all__ = ["calibrate", "instrument", "RangeObserver", "METHODS", "schedule_float_reductions"]

METHODS = ("minmax", "percentile")


def _tracked(func: relax.Function):
    """(var, name) of the float tensors worth observing: params and non-constant op results."""
    names = tensor_names(func)
    values = {b.var: b.value for b in bindings(func)}
    out = []
    for var, name in names.items():
        if not (dtype_of(var) or "").startswith("float"):
            continue
        if var in values and resolve_const(values[var], values) is not None:
            continue  # reshape(bias constant) and friends: not activations
        out.append((var, name))
    return out


def instrument(mod: tvm.IRModule, reduce: bool = True, func_name: str = "main"):
    """Return ``(mod', names)``: ``main`` of ``mod'`` returns ``(orig_output, *observed)``.

    With ``reduce`` each observed tensor contributes two scalars ``min(x), max(x)`` computed in the
    graph (cheap to bring back); otherwise the tensor itself.
    """
    mod = relax.transform.ToNonDataflow()(mod)  # observed vars must be visible at function scope
    func = main_function(mod, func_name)
    tracked = _tracked(func)
    bb = relax.BlockBuilder()
    extra_bindings, outs = [], []
    for var, _ in tracked:
        exprs = [relax.op.min(var), relax.op.max(var)] if reduce else []
        if not reduce:
            outs.append(var)
        for e in exprs:
            e = bb.normalize(e)
            v = relax.Var(f"obs{len(extra_bindings)}", e.ty)
            extra_bindings.append(relax.VarBinding(v, e))
            outs.append(v)
    seq = func.body
    blocks = list(seq.blocks) + ([relax.BindingBlock(extra_bindings)] if extra_bindings else [])
    ret = relax.Tuple([seq.body] + outs)
    body = relax.SeqExpr(blocks, bb.normalize(ret))
    new_func = relax.Function(func.params, body, ret_ty=body.body.ty, attrs=func.attrs)
    mod = tvm.IRModule({func_name: new_func})
    mod = relax.transform.Normalize()(mod)
    return mod, [n for _, n in tracked]


class RangeObserver:
    """Accumulates per-tensor min/max and (for percentile) a histogram of |x|.

    The histogram has ``bins`` equal bins on ``[0, top]``; when a batch exceeds ``top`` the range
    doubles and adjacent bins merge pairwise, so earlier counts stay exact at coarser resolution.
    """

    def __init__(self, method: str = "minmax", percentile: float = 99.99, bins: int = 2048):
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}", f"use one of {', '.join(METHODS)}")
        if not 0.0 < percentile <= 100.0:
            raise CalibrationError(f"percentile {percentile} outside (0, 100]", "pass e.g. 99.99")
        self.method, self.percentile, self.bins = method, float(percentile), int(bins)
        self.stats: dict[str, dict] = {}

    def update_minmax(self, name: str, lo: float, hi: float):
        st = self.stats.setdefault(name, {"min": np.inf, "max": -np.inf})
        st["min"] = min(st["min"], float(lo))
        st["max"] = max(st["max"], float(hi))

    def update_tensor(self, name: str, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        self.update_minmax(name, x.min(), x.max())
        if self.method != "percentile":
            return
        st = self.stats[name]
        ax = np.abs(x).ravel()
        amax = float(ax.max(initial=0.0))
        if "hist" not in st:
            st["top"] = amax if amax > 0 else 1e-8
            st["hist"] = np.zeros(self.bins, dtype=np.int64)
        while amax > st["top"]:
            h = st["hist"]
            st["hist"] = np.concatenate([h[0::2] + h[1::2], np.zeros(self.bins // 2, dtype=np.int64)])
            st["top"] *= 2.0
        counts, _ = np.histogram(ax, bins=self.bins, range=(0.0, st["top"]))
        st["hist"] += counts

    def result(self) -> dict:
        out = {}
        for name, st in self.stats.items():
            absmax = max(abs(st["min"]), abs(st["max"]))
            alpha = absmax
            if self.method == "percentile" and "hist" in st:
                cum = np.cumsum(st["hist"])
                k = int(np.searchsorted(cum, cum[-1] * self.percentile / 100.0))
                alpha = min(absmax, (k + 1) * st["top"] / self.bins)
            out[name] = {"min": st["min"], "max": st["max"], "absmax": absmax, "alpha": float(alpha),
                         "method": self.method}
            if self.method == "percentile":
                out[name]["percentile"] = self.percentile
        return out


def _samples(batches, in_shape):
    """Yield model-shaped float32 inputs from ``[B, F, T]`` batches (split when the model has B=1)."""
    for batch in batches:
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3:
            raise CalibrationError(f"calibration batch has shape {x.shape}, expected [B, F, T]",
                                   "pass mel batches shaped [batch, features, frames]")
        static = all(isinstance(d, int) for d in in_shape)
        if static and tuple(x.shape[1:]) != tuple(in_shape[1:]):
            raise CalibrationError(
                f"calibration batch [B, F, T] = {list(x.shape)} does not match the model input {list(in_shape)}",
                "re-import the model with this number of frames or crop/pad the batches")
        if static and x.shape[0] != in_shape[0]:
            if in_shape[0] != 1:
                raise CalibrationError(f"batch size {x.shape[0]} does not match the model's {in_shape[0]}",
                                       "use batches of the model's batch size")
            for i in range(x.shape[0]):
                yield x[i:i + 1]
        else:
            yield x


_COMM_REDUCE = 2  # tirx.IterVar kind of a reduction axis


def _schedule_reduction_block(sch, name: str, vector: int) -> bool:
    """Reorder one ``C[spatial] (+)= f(...)`` block to ``spatial[:-1], reduction, spatial[-1]`` with the
    last spatial loop split by ``vector`` and vectorized, and the first non-unit spatial loop parallel.

    Every output element still accumulates its reduction axes in the original (ascending) order, one
    term after the other: only *which outputs* are computed side by side changes, so float results are
    bit-identical.  False (``sch`` untouched) when the block does not have that simple shape."""
    blk = sch.get_sblock(name)
    kinds = [int(iv.iter_type) for iv in sch.get(blk).iter_vars]
    loops = sch.get_loops(blk)
    if _COMM_REDUCE not in kinds or len(loops) != len(kinds):
        return False
    ns = kinds.index(_COMM_REDUCE)
    if ns == 0 or any(k != _COMM_REDUCE for k in kinds[ns:]):
        return False
    ext = sch.get(loops[ns - 1]).extent
    if not isinstance(ext, tvm.tirx.IntImm) or int(ext.value) < vector:
        return False
    spatial, reduction = loops[:ns], loops[ns:]
    outer, inner = sch.split(spatial[-1], [None, vector])
    sch.reorder(*spatial[:-1], *reduction, outer, inner)
    sch.vectorize(inner)  # before decompose_reduction: the vectorizer wants a block with its init
    par = [lp for lp in spatial[:-1] if int(sch.get(lp).extent) > 1]
    if par:
        sch.parallel(par[0])
    sch.decompose_reduction(blk, reduction[0])
    return True


def schedule_float_reductions(lowered: tvm.IRModule, vector: int = 8) -> tuple[tvm.IRModule, int]:
    """Schedule every simple reduction block (matmul, conv1d/conv2d, ...) of a lowered module's
    PrimFuncs with :func:`_schedule_reduction_block`; returns ``(module, number of blocks scheduled)``.

    A block the schedule primitives refuse keeps TVM's default loop nest (only slower)."""
    from tvm import s_tir

    n, updates = 0, {}
    for gv, func in lowered.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
            continue
        sch = s_tir.Schedule(func)
        done = 0
        for name in [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]:
            trial = sch.copy()
            try:
                if _schedule_reduction_block(trial, name, vector):
                    sch, done = trial, done + 1
            except (s_tir.ScheduleError, tvm.TVMError):
                continue
        if done:
            updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
            n += done
    for gv, f in updates.items():
        lowered[gv] = f
    return lowered, n


def _build_float(imod: tvm.IRModule, target):
    """Lower (:func:`relax_passes.lowering.lower`: the default CPU pipeline's legalize + fuse phase), schedule
    the reductions, then let ``tvm.compile`` finish the default pipeline."""

    tgt = tvm.target.Target(target) if isinstance(target, str) else target
    with tgt:
        lowered = lower(imod)
    lowered, _ = schedule_float_reductions(lowered)
    return tvm.compile(lowered, target=tgt, relax_pipeline="default")


def calibrate(mod: tvm.IRModule, batches, method: str = "minmax", percentile: float = 99.99,
              target="llvm", progress: bool = True, func_name: str = "main") -> dict:
    """Observe activation ranges of the float module over ``batches``.

    Returns ``{tensor_name: {"min", "max", "absmax", "alpha", "method"[, "percentile"]}}`` (plain
    floats, JSON-serialisable); ``alpha`` is the clipping value Quantize uses.
    Raises CalibrationError for empty data or shapes that do not fit the model.
    """
    obs = RangeObserver(method, percentile)
    func = main_function(mod, func_name)
    if len(func.params) != 1:
        raise CalibrationError(f"model has {len(func.params)} inputs; calibration supports one mel input",
                               "export the model with the mel spectrogram as its only input")
    in_shape = shape_of(func.params[0])
    reduce = method == "minmax"
    imod, names = instrument(mod, reduce=reduce, func_name=func_name)
    ex = _build_float(imod, target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    n = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    for x in _samples(tqdm(batches, desc=f"calibrate ({method})", unit="batch", total=total,
                           disable=not progress), in_shape):
        res = vm[func_name](tvm.runtime.tensor(x))
        for i, name in enumerate(names):
            if reduce:
                obs.update_minmax(name, res[1 + 2 * i].numpy(), res[2 + 2 * i].numpy())
            else:
                obs.update_tensor(name, res[1 + i].numpy())
        n += 1
    if n == 0:
        raise CalibrationError("no calibration data", "pass at least one mel batch")
    return obs.result()

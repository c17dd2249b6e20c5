"""FoldBatchNorm: fold inference BatchNorm into the preceding 1-D convolution (paper §2.2).

Before (what the ONNX importer emits for ``Conv -> BatchNormalization``)::

    lv  = R.nn.conv1d(x, W)                                # W: Constant [O, I/groups, K]
    lv1 = R.add(lv, R.reshape(b, [1, O, 1]))               # optional bias
    lv2 = R.nn.batch_norm(lv1, gamma, beta, mean, var, axis=1, epsilon=eps, training=False)
    lv3 = lv2[0]

After::

    lv3 = R.add(R.nn.conv1d(x, W'), b')                    # W', b': Constants, b' shaped [1, O, 1]

with ``k = gamma / sqrt(var + eps)``, ``W' = W * k[:, None, None]``, ``b' = (b - mean) * k + beta``
(float64 math, stored float32).  Works for any ``groups`` (depthwise included) because OIW keeps
the output channel on axis 0.  The dead conv/bias/BN bindings are removed.

Before folding, every BatchNorm's statistics are recorded (:func:`extract_bn_stats`; what
:func:`fold_batchnorm` returns with the folded module) for zero-shot synthesis (paper §2.3, eq. 2), which matches the
running mean/var of the tensor each BN normalises: the record names that tensor's producer
(``"nn.conv1d#k"`` in the *unfolded* module, the ONNX node names when ``onnx_model`` is given) and
where the folded conv ends up (``"folded_conv"``: ``"nn.conv1d#j"`` in the *folded* module, the
stable names calibration and Quantize use).

A BatchNorm whose input is not a foldable conv (e.g. after a ReLU or fed by a non-constant
weight) is left in place: Quantize then refuses it by name.  ``training=True`` BatchNorms are
refused here (their output would depend on batch statistics).

Usage::

    mod, stats = fold_batchnorm(mod, onnx_model=model)   # onnx_model optional, only for names; stats: list of
                                                         # JSON-serialisable dicts
    mod = FoldBatchNorm()(mod)                           # the same fold as a pass (tvm.transform.Sequential)
"""

from __future__ import annotations

import json

import numpy as np
import tvm
from tvm import relax

from tvm.relax.dpl import is_op, wildcard

from relax_passes._util import (UseIndex, bindings, call_op_name, const, copy_module, dtype_of, resolve_const,
                                tensor_names)

__all__ = ["FoldBatchNorm", "fold_batchnorm", "extract_bn_stats", "onnx_batchnorm_nodes", "onnx_bn_stats"]

# What a BatchNorm normalises when it can fold: a conv1d, seen through an optional bias add (its constant either
# operand).  What a pattern cannot say (one user each, constant weights and bias, layouts) is checked in
# _analyse, each failure with its reason.
_CONV = is_op("relax.nn.conv1d")(wildcard(), wildcard())
_BIAS = wildcard()
_BIASED = is_op("relax.add")(_CONV, _BIAS)
_BN = is_op("relax.nn.batch_norm")(_BIASED | _CONV | wildcard(), *(wildcard() for _ in range(4)))


def onnx_batchnorm_nodes(onnx_model) -> list[dict]:
    """``[{"node": bn_name, "input": tensor, "producer": node_name_or_None, "producer_op": op}]``
    for every BatchNormalization node of an ONNX model, in graph order.

    The Relax ONNX importer converts nodes in graph order and emits one ``R.nn.batch_norm`` per
    BatchNormalization node, so the k-th record matches the k-th ``batch_norm`` binding.
    """
    producers = {out: node for node in onnx_model.graph.node for out in node.output}
    res = []
    for node in onnx_model.graph.node:
        if node.op_type == "BatchNormalization":
            src = producers.get(node.input[0])
            res.append({
                "node": node.name,
                "input": node.input[0],
                "producer": src.name if src is not None else None,
                "producer_op": src.op_type if src is not None else None,
            })
    return res


def onnx_bn_stats(onnx_model) -> list[dict]:
    """BN statistics read from the ONNX file itself, one record per BatchNormalization node with constant
    parameters, for a graph whose BNs were folded before Relax saw them (the Conformer frontend's onnxsim folds
    Conv + BN): the keys of :func:`extract_bn_stats` with ``relax_var`` None, ``folded_by`` ``"frontend"`` and
    ``producer`` / ``folded_conv`` naming the ONNX producer node."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(a.t) for n in onnx_model.graph.node if n.op_type == "Constant"
              for a in n.attribute if a.name == "value"}
    inits.update(consts)
    # torch's exporter shares equal constants through Identity nodes (a BN weight of ones, a LayerNorm's ones)
    changed = True
    while changed:
        changed = False
        for n in onnx_model.graph.node:
            if n.op_type == "Identity" and n.output[0] not in inits and n.input[0] in inits:
                inits[n.output[0]] = inits[n.input[0]]
                changed = True
    recs = []
    for rec in onnx_batchnorm_nodes(onnx_model):
        node = next(n for n in onnx_model.graph.node if n.name == rec["node"] and n.op_type == "BatchNormalization")
        params = [inits.get(i) for i in node.input[1:5]]
        if any(p is None for p in params):  # parameters computed at run time: not statistics we can report
            continue
        gamma, beta, mean, var = (np.asarray(p, np.float64).ravel() for p in params)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        prod = rec["producer"]
        recs.append({"index": len(recs), "relax_var": None, "eps": float(eps), "axis": 1, "folded": True,
                     "folded_by": "frontend", "producer": prod, "folded_conv": prod if rec["producer_op"] == "Conv"
                     else None, "reason": None, "channels": int(mean.size), "mean": mean.tolist(),
                     "var": var.tolist(), "gamma": gamma.tolist(), "beta": beta.tolist(), "onnx_node": rec["node"],
                     "onnx_input": rec["input"], "onnx_producer": prod, "function": None})
    return recs


def _analyse(func: relax.Function):
    """Find every batch_norm and decide whether it folds.  Returns (records, plan).

    plan maps the ``bn[0]`` TupleGetItem var to (conv call, folded W, folded b, record index).
    """
    idx = UseIndex(func)
    values = idx.value
    var_of = {v: k for k, v in values.items()}
    var2val = relax.analysis.get_var2val(func)
    names = tensor_names(func)

    records, plan = [], {}
    for b in idx.bindings:
        m = _BN.extract_matched_expr(b.value, var2val) if isinstance(b.value, relax.Call) else None
        if m is None:
            continue
        call = b.value
        attrs = call.attrs
        x, gamma, beta, mean, var = call.args
        arrays = [resolve_const(a, values) for a in (gamma, beta, mean, var)]
        rec = {
            "index": len(records),
            "relax_var": b.var.name,
            "eps": float(attrs.epsilon),
            "axis": int(attrs.axis),
            "folded": False,
            "producer": None,
            "folded_conv": None,
            "reason": None,
        }
        if any(a is None for a in arrays):
            rec["reason"] = "BatchNorm parameters are not constants"
            records.append(rec)
            continue
        g, bt, mu, vr = (np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays)
        rec.update(channels=int(mu.size), mean=mu.tolist(), var=vr.tolist(), gamma=g.tolist(), beta=bt.tolist())
        if bool(attrs.training):
            raise ValueError(
                f"FoldBatchNorm: batch_norm {b.var.name} has training=True; export the model in eval "
                f"mode (model.eval(), TrainingMode.PRESERVE) so BatchNorm uses running statistics"
            )

        # the normalised tensor: the conv behind a constant bias add used only by the BatchNorm, else x itself
        conv_var, bias = x, None
        if _BIASED in m and idx.only_user(x) is not None:
            bias = resolve_const(var_of.get(m[_BIAS], m[_BIAS]), values)
            if bias is not None:
                conv_var = var_of[m[_CONV]]
        src = values.get(conv_var) if isinstance(conv_var, relax.Var) else None
        rec["producer"] = names.get(conv_var)
        items = [u for u in idx.users.get(b.var, []) if isinstance(values[u], relax.TupleGetItem)]
        out0 = [u for u in items if int(values[u].index) == 0]
        reason = None
        if call_op_name(src) != "nn.conv1d":
            reason = f"input is produced by {call_op_name(src) or type(src).__name__}, not nn.conv1d"
        elif idx.only_user(conv_var) is None:
            reason = "conv1d output has other users besides the BatchNorm"
        elif any(int(values[u].index) != 0 and (u in idx.users or u in idx.outs) for u in items):
            reason = "batch_norm running-stat outputs are used"
        elif int(attrs.axis) != 1 or src.attrs.data_layout != "NCW" or src.attrs.kernel_layout != "OIW" \
                or src.attrs.out_layout != "NCW":
            reason = "only NCW/OIW conv1d with BatchNorm on axis 1 folds"
        W = resolve_const(src.args[1], values) if reason is None else None
        if reason is None and W is None:
            reason = "conv1d weight is not a constant (bind params first: relax.transform.BindParams)"
        if reason is None and bias is not None and bias.size != mu.size:
            reason = f"bias of size {bias.size} is not per-channel for {mu.size} channels"
        if reason is None and len(out0) != 1:
            reason = "batch_norm output 0 is not extracted exactly once"
        if reason is not None:
            rec["reason"] = reason
            records.append(rec)
            continue
        k = g / np.sqrt(vr + rec["eps"])
        b0 = np.zeros_like(mu) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
        w_f = (np.asarray(W, dtype=np.float64) * k[:, None, None]).astype(np.float32)
        b_f = ((b0 - mu) * k + bt).astype(np.float32).reshape(1, -1, 1)
        rec["folded"] = True
        plan[out0[0]] = (src, w_f, b_f, rec["index"])
        records.append(rec)
    return records, plan


def extract_bn_stats(mod: tvm.IRModule, onnx_model=None, func_name: str = "main") -> list[dict]:
    """BatchNorm statistics of an *unfolded* module, without changing it (same records as the pass).

    Each record: ``index, relax_var, channels, mean, var, gamma, beta, eps, axis, producer`` (stable name
    of the normalised tensor's producer), ``folded`` (whether FoldBatchNorm will fold it), ``reason``
    (why not), and with ``onnx_model`` also ``onnx_node``/``onnx_input``/``onnx_producer``.
    """
    records, _ = _analyse(mod[func_name])
    _attach_onnx_names(records, onnx_model)
    return records


def _attach_onnx_names(records, onnx_model):
    if onnx_model is None:
        return
    nodes = onnx_batchnorm_nodes(onnx_model)
    if len(nodes) != len(records):
        # a mismatch means the importer reordered or dropped nodes: better no names than wrong ones
        return
    for rec, node in zip(records, nodes):
        rec["onnx_node"] = node["node"]
        rec["onnx_input"] = node["input"]
        rec["onnx_producer"] = node["producer"]


@relax.expr_functor.mutator
class _Folder(relax.PyExprMutator):
    def __init__(self, mod, plan):
        super().__init__(mod)
        self.plan = plan
        self.new_weights = {}  # id(Constant) -> record index, to name the folded convs afterwards

    def visit_var_binding_(self, binding):
        entry = self.plan.get(binding.var)
        if entry is None:
            return super().visit_var_binding_(binding)
        conv, w_f, b_f, idx = entry
        a = conv.attrs
        w_const = const(w_f, "float32")
        self.new_weights[idx] = w_const
        data = self.visit_expr(conv.args[0])
        y = self.builder_.emit(relax.op.nn.conv1d(
            data, w_const, strides=a.strides, padding=a.padding, dilation=a.dilation, groups=a.groups,
            data_layout=a.data_layout, kernel_layout=a.kernel_layout, out_layout=a.out_layout,
            out_dtype=dtype_of(conv),
        ))
        out = relax.op.add(y, const(b_f, "float32"))
        if isinstance(binding.var, relax.DataflowVar):
            new = self.builder_.emit(out)
        else:  # BN result is a function output: keep it a non-dataflow var
            new = self.builder_.emit_output(out)
        self.set_var_remap(binding.var, new)


def fold_batchnorm(mod: tvm.IRModule, onnx_model=None) -> tuple[tvm.IRModule, list[dict]]:
    """Fold ``conv1d [+ bias] -> batch_norm`` into one conv1d + bias in every Relax function of ``mod``.

    Returns the folded module (``mod`` is not changed) and the records of every BatchNorm (keys of
    :func:`extract_bn_stats`, plus ``function`` and, for a folded one, ``folded_conv``: the stable name of its
    conv in the *folded* module).  ``onnx_model`` is only used to add ONNX node names to the records of
    ``main``.
    """
    mod = copy_module(mod)
    all_records = []
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, relax.Function):
            continue
        records, plan = _analyse(func)
        if gv.name_hint == "main":
            _attach_onnx_names(records, onnx_model)
        for r in records:
            r["function"] = gv.name_hint
        if plan:
            folder = _Folder(mod, plan)
            new_func = folder.visit_expr(func)
            new_func = relax.analysis.remove_all_unused(new_func)
            mod[gv] = new_func
            # name the folded convs with the stable names of the *folded* module
            names = tensor_names(new_func)
            by_weight = {}
            for b in bindings(new_func):
                if call_op_name(b.value) == "nn.conv1d":
                    by_weight[b.value.args[1]] = names[b.var]
            for idx, w in folder.new_weights.items():
                for wc, nm in by_weight.items():
                    if wc.same_as(w):
                        records[idx]["folded_conv"] = nm
        all_records.extend(records)
    return mod, all_records


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
class FoldBatchNorm:
    """Module pass: :func:`fold_batchnorm`, its records dropped or, with ``attach_stats``, stored as JSON in the
    module attribute ``"zsq.bn_stats"``."""

    def __init__(self, onnx_model=None, attach_stats: bool = False):
        self.onnx_model = onnx_model
        self.attach_stats = attach_stats

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod, records = fold_batchnorm(mod, onnx_model=self.onnx_model)
        return mod.with_attr("zsq.bn_stats", json.dumps(records)) if self.attach_stats else mod

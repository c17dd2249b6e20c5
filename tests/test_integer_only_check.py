"""IntegerOnlyCheck passes on quantized modules and fails, naming the kernel, on float ones."""

import numpy as np
import pytest
import tvm
from tvm import relax

import relax_passes as rp
from relax_passes._util import bindings, call_op_name, main_function
from zsq_tvm.core.errors import IntegerOnlyViolation
from relax_passes.lowering import lower


def test_passes_on_quantized(tiny_quartznet):
    lowered = lower(tiny_quartznet["qmod"])
    chk = rp.IntegerOnlyCheck()
    assert chk(lowered) is not None
    rep = chk.report
    assert rep["ok"] and rep["boundary"]["input_quantize"] == ["zsq_input_quantize"]
    assert rep["boundary"]["output_dequantize"] == ["zsq_output_dequantize"]
    assert rep["integer_ops"]["mul"] > 0 and rep["float_ops_in_boundary"]["div"] >= 1


def test_fails_on_float_module(tiny_quartznet):
    lowered = lower(tiny_quartznet["folded"])
    with pytest.raises(IntegerOnlyViolation, match=r"conv1d\w*: \w+ \(float32\)"):
        rp.IntegerOnlyCheck()(lowered)
    rep = rp.check_integer_only(tiny_quartznet["folded"])  # lowers first
    assert not rep["ok"] and all(v["dtype"] == "float32" for v in rep["violations"])


def test_fails_on_float_op_injected_mid_graph(tiny_quartznet):
    """Dequantize-compute-requantize in the middle of an otherwise integer graph is caught."""
    qmod = tiny_quartznet["qmod"]
    func = main_function(qmod)
    target = next(b.var for b in bindings(func) if call_op_name(b.value) == "nn.conv1d")

    @relax.expr_functor.mutator
    class Inject(relax.PyExprMutator):
        def visit_var_binding_(self, binding):
            super().visit_var_binding_(binding)
            if binding.var.same_as(target):
                new = self.builder_.emit(
                    relax.op.astype(relax.op.sqrt(relax.op.astype(binding.var, "float32")), "int32"))
                self.set_var_remap(binding.var, new)

    bad = tvm.IRModule(dict(qmod.functions))
    bad["main"] = Inject(bad).visit_expr(func)
    rep = rp.check_integer_only(bad)
    assert not rep["ok"]
    assert any("sqrt" in v["func"] or "sqrt" in v["op"] or v["dtype"] == "float32" for v in rep["violations"])
    with pytest.raises(IntegerOnlyViolation, match="float32"):
        rp.assert_integer_only(bad)


def test_boundary_kernel_misuse_is_caught(tiny_quartznet):
    """A role-tagged float kernel that is not at the model boundary does not get a free pass."""
    lowered = lower(tiny_quartznet["qmod"])
    func = main_function(lowered)
    deq = next(b for b in bindings(func) if call_op_name(b.value) == "call_tir"
               and b.value.args[0].name_hint == "zsq_output_dequantize")
    # return something else than the dequantized tensor: the dequantize is now mid-graph/dead-end
    other = next(b.var for b in bindings(func) if not b.var.same_as(deq.var))
    new_func = relax.Function(func.params, relax.SeqExpr(func.body.blocks, relax.Tuple([other, deq.var])),
                              ret_ty=relax.TupleType([other.ty, deq.var.ty]),
                              attrs=func.attrs)
    mod = tvm.IRModule(dict(lowered.functions))
    mod["main"] = new_func
    rep = rp.check_integer_only(mod, lower=False)
    assert rep["ok"]  # still returned: fine
    new_func = relax.Function(func.params, relax.SeqExpr(func.body.blocks, other),
                              ret_ty=other.ty, attrs=func.attrs)
    mod["main"] = new_func
    rep = rp.check_integer_only(mod, lower=False)
    assert not rep["ok"] and "not a model output" in rep["violations"][0]["op"]

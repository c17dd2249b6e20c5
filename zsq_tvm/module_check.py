"""A Relax module read from a file (``module.json``) is checked to hold only what zsq's quantizer writes,
before any TVM pass sees it.

Why: the folder's hashes prove a file is the one its manifest lists, not who made it, and TVM runs code of
a module at *compile* time -- ``FoldConstant`` builds and executes every ``call_tir`` whose arguments are
constants, so a PrimFunc with ``T.call_extern("int32", "system", ...)`` in a crafted ``module.json`` ran a
shell command under ``zsq check`` / ``zsq compile``.  Our quantized modules are plain Relax tensor ops plus
two small PrimFuncs (the float input quantize and output dequantize) that compute with arithmetic only.

Refused, naming the function and what was found:

* functions other than Relax functions and TIR PrimFuncs, module attributes (e.g. ``external_mods``: linked
  into the library as is);
* in Relax: ``ExternFunc`` (a packed function by name) anywhere, and any op that calls out -- packed,
  extern, closures, builtins, print/assert, VM / memory / runtime ops, ``call_tir`` variants -- only
  ``relax.call_tir`` of a PrimFunc of this module is allowed;
* in TIR: any call but the arithmetic intrinsics listed in :data:`TIR_CALLS` (no ``call_extern``,
  ``call_packed``, ``call_llvm_intrin``, address or handle operations).
"""

from __future__ import annotations

import re

from zsq_tvm.core.errors import ArtifactError

__all__ = ["TIR_CALLS", "check_module"]

#: TIR intrinsics a quantized module's PrimFuncs may call: pure arithmetic on their own buffers
TIR_CALLS = frozenset({
    "tirx.nearbyint", "tirx.round", "tirx.floor", "tirx.ceil", "tirx.trunc", "tirx.fabs", "tirx.if_then_else",
    "tirx.likely", "tirx.shift_left", "tirx.shift_right", "tirx.bitwise_and", "tirx.bitwise_or",
    "tirx.bitwise_xor", "tirx.bitwise_not", "tirx.isnan", "tirx.isinf", "tirx.isfinite",
})

# a tensor op: ``relax.NAME`` or ``relax.nn.NAME``; other namespaces (vm, builtin, memory, runtime, ccl, ...)
# are runtime plumbing a quantized module never holds
_TENSOR_OP = re.compile(r"^relax\.(nn\.)?[a-z][a-z0-9_]*$")
# ... and within them, ops that call out of the graph or have effects
_CALLS_OUT = re.compile(r"call|packed|extern|closure|builtin|print|assert|vdevice|on_device|null_value")


def _fail(source: str, what: str) -> ArtifactError:
    return ArtifactError(f"{source} holds {what}, which zsq's quantizer never writes (a module with it could run "
                         "code when compiled)", "re-create the folder with `zsq quantize`; do not use a folder "
                         "from an untrusted source")


def check_module(mod, source: str) -> None:
    """Raise :class:`ArtifactError` unless ``mod`` holds only what a quantized zsq module holds."""
    import tvm
    import tvm_ffi
    from tvm import relax, tirx

    if mod.attrs is not None and len(mod.attrs.keys()):
        raise _fail(source, f"module attributes {sorted(str(k) for k in mod.attrs.keys())}")
    prim_funcs = {gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    for gv, func in mod.functions.items():
        name = gv.name_hint
        if isinstance(func, tirx.PrimFunc):
            bad: list[str] = []

            def visit_tir(node, bad=bad):
                if type(node).__name__ == "Call":
                    op = node.op.name if isinstance(node.op, tvm.ir.Op) else type(node.op).__name__
                    if op not in TIR_CALLS:
                        bad.append(op)

            tvm_ffi.structural_walk(func.body, visit_tir)
            if bad:
                raise _fail(source, f"a call to {bad[0]!r} in the PrimFunc {name!r}")
        elif isinstance(func, relax.Function):
            bad = []

            def visit_relax(e, bad=bad):
                if isinstance(e, relax.ExternFunc):
                    bad.append(f"the packed function {str(e.global_symbol)!r}")
                elif isinstance(e, relax.Call) and not isinstance(e.op, (tvm.ir.Op, relax.GlobalVar)):
                    bad.append(f"a call of a {type(e.op).__name__} (a closure or packed function)")
                elif isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
                    op = e.op.name
                    if op == "relax.call_tir":
                        callee = e.args[0]
                        if not isinstance(callee, relax.GlobalVar) or callee.name_hint not in prim_funcs:
                            bad.append("a call_tir of something other than a PrimFunc of the module")
                    elif not _TENSOR_OP.match(op) or _CALLS_OUT.search(op):
                        bad.append(f"the op {op!r}")

            relax.analysis.post_order_visit(func, visit_relax)
            if bad:
                raise _fail(source, f"{bad[0]} in the function {name!r}")
        else:
            raise _fail(source, f"a {type(func).__name__} named {name!r}")

"""Whole-model CUDA build: int8 GEMM kernels for the pointwise convs, dlight for the rest.

Used by the CUDA targets of :mod:`zsq_tvm.targets` (``t4``, ``cuda``, ``cuda-sm_XX``):

1. ``prepare`` (before :func:`relax_passes.lowering.lower`): :class:`zsq_tvm.backends.cuda.offload_pointwise.CudaInt8Pointwise`
   replaces every pointwise int8 conv1d + requantize chain by a hand-scheduled WMMA / dp4a kernel
   (:mod:`zsq_tvm.backends.cuda.int8_gemm`, requantize fused), and
   :class:`zsq_tvm.backends.cuda.offload_depthwise.CudaInt8Depthwise` every depthwise one by the kernel of
   :mod:`zsq_tvm.backends.cuda.depthwise`.
2. :func:`schedule_module` (after lowering): every PrimFunc not scheduled yet gets the first dlight GPU
   rule that applies *and builds*: ``Matmul`` (float only: its int8 tensorization fails in
   ``InjectSoftwarePipeline`` in TVM 0.27), ``Reduction``, ``GeneralReduction``, ``Fallback``.
   dlight's ``GEMV`` rule is left out: it crashes on depthwise conv1d (facts.md).  Integer kernels that
   full inlining would copy more than :data:`INLINE_SIZE_LIMIT` times (:func:`inlined_size`; the integer
   square root of a LayerNorm) get :class:`LinearInlineFallback` instead: dlight's inline-everything makes
   their expressions explode.
3. :func:`relax_pipeline`: the rest of TVM's CUDA Relax pipeline (dataflow lowering, memory planning,
   VM lowering) without its legalize/dlight stage, which step 2 replaced.

TVM 0.27 keeps the generated CUDA C in the library (no nvcc at build time): the runtime compiles it when
the library is loaded, through the ``tvm_callback_cuda_compile`` global (TVM's own uses NVRTC, or nvcc with
``TVM_CUDA_COMPILE_MODE=nvcc``).  ``tools/gpu_check.py`` instead registers one that serves fatbins nvcc
made ahead of time, so a GPU machine needs only the TVM runtime.
"""

from __future__ import annotations

from relax_passes.tir_inline import injective as _injective  # shared with the CPU path (relax_passes.tir_inline)
from relax_passes.tir_inline import inline_once_read
from relax_passes.tir_inline import loads_of as _loads_of
from relax_passes.tir_int_division import register_pipeline
from zsq_tvm.backends.cuda.int8_gemm import CUDA_FLOAT_TYPES, sass_counts, sass_float_ops
from zsq_tvm.backends.cuda.offload_depthwise import CudaInt8Depthwise
from zsq_tvm.backends.cuda.offload_pointwise import CudaInt8Pointwise

__all__ = ["schedule_module", "relax_pipeline", "prepare", "compile_lowered", "float_rules", "LinearInlineFallback"]


def prepare(mod):
    return CudaInt8Depthwise()(CudaInt8Pointwise()(mod))


def _is_int_func(func) -> bool:
    """True when no buffer parameter of ``func`` is floating point."""
    for p in func.params:
        if str(getattr(p, "dtype", "")).startswith(("float", "bfloat")):
            return False
    return True


def inlined_size(sch) -> int:
    """How many copies of block expressions full inlining would make: each elementwise block is copied once per
    path (counting repeated loads) from it to a block that stays (a reduction or the output).  A chain is
    linear (one copy per block); a Newton iteration, whose every step uses the previous one twice, doubles
    per step."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    paths: dict = {}
    for blk in reversed(blocks):  # consumers come after their producers
        b = sch.get(blk)
        if not _injective(sch, blk):
            paths[b.name_hint] = 1
            continue
        buf = b.writes[0].source
        cons = sch.get_consumers(blk)
        paths[b.name_hint] = max(1, sum(_loads_of(sch.get(c), buf) * paths.get(sch.get(c).name_hint, 1)
                                        for c in cons))
    return sum(paths.values())


INLINE_SIZE_LIMIT = 20000  # the Conformer's LayerNorm kernels: ~4e7; every other kernel of our models: < 100


class LinearInlineFallback:
    """GPU schedule rule for integer kernels that dlight cannot schedule in reasonable time.

    dlight's rules all start with ``try_inline``: inline every block that can be.  An integer LayerNorm's
    square root is a Newton iteration, ``x' = (x + v // x) >> 1``: each step reads ``x`` twice, so inlining
    eight steps doubles the expression eight times (the Conformer's fused LayerNorm kernels, ~96 blocks, did
    not finish scheduling in 10 minutes).  This rule inlines an elementwise block only where its one consumer
    reads it *once* (the expression grows by addition, not multiplication) and keeps the others as blocks.

    Then, when every kept block is elementwise (no reduction) and only the last one writes an output (the
    LayerNorm's per-row square root and scale chain followed by the per-element normalisation), **one
    kernel**: the last block's loops fused and mapped to ``blockIdx.x`` x ``threadIdx.x``, every other block
    computed at the thread, into thread-local buffers (each thread evaluates its row's chain as a sequence of
    statements: a few thousand integer ops, no expression growth, no synchronisation)::

        before:  blk_1[row] ... blk_24[row]  (one kernel each)  ->  out[row, c]   (~25 kernel launches)
        after:   for (bx, tx):  r = row(bx, tx);  blk_1[r] ... blk_24[r] (local);  out[r, c]   (1 launch)

    Otherwise each kept block's spatial loops go to ``blockIdx.x`` x ``threadIdx.x`` like dlight's
    ``Fallback`` (reductions run serially per thread), one kernel per block.
    """

    def __init__(self, bind: bool = True):
        self.bind = bind  # False: the same inlining, no thread bindings (runs on llvm: a CPU check of the rule)

    def apply(self, func, target, _tunable=False):
        from tvm.s_tir.dlight import base

        nthreads = base.max_threads_per_block(target) if self.bind else 256
        sch = self._inlined(func)
        if sch is None:
            return None
        from tvm.s_tir.schedule import ScheduleError

        inlined = sch.copy()  # _one_kernel may have moved blocks before it fails
        try:
            return self._one_kernel(sch, nthreads)
        except (ValueError, ScheduleError):  # not of that shape, or compute_at cannot place a block
            return self._per_block(inlined, nthreads)

    @staticmethod
    def _inlined(func):
        from tvm import s_tir
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        sch = s_tir.Schedule(func)
        if normalize_prim_func(sch) is None:
            return None
        inline_once_read(sch)  # relax_passes.tir_inline: once-read elementwise blocks only
        return sch

    def _one_kernel(self, sch, nthreads):
        root = sch.get_sblock("root")
        blocks = sch.get_child_blocks(root)
        internal = set(sch.get(root).alloc_buffers)
        for b in blocks:
            blk = sch.get(b)
            if any(int(iv.iter_type) != 0 for iv in blk.iter_vars):  # a reduction: not one thread's work
                raise ValueError("a reduction block")
            if b != blocks[-1] and any(w.source not in internal for w in blk.writes):
                raise ValueError("more than one block writes an output")
        last = blocks[-1]
        bx, tx = sch.split(sch.fuse(*sch.get_loops(last)), factors=[None, nthreads])
        for b in reversed(blocks[:-1]):  # consumers first: each producer lands above its consumer
            sch.compute_at(b, tx)
            sch.set_scope(b, 0, "local")
        if self.bind:
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
        return sch

    def _per_block(self, sch, nthreads):
        from tvm.s_tir.dlight.analysis import normalize_prim_func

        reductions = []
        for info in normalize_prim_func(sch):
            blk = info.block_rv
            s_loops, r_loops, o_loops = [], [], []
            for loop, kind in zip(sch.get_loops(blk), info.dom_kind()):
                {"S": s_loops, "R": r_loops, "O": o_loops}[kind].append(loop)
            if not s_loops:
                s_loops.append(sch.add_unit_loop(blk))
            sch.reorder(*s_loops, *r_loops, *o_loops)
            bx, tx = sch.split(sch.fuse(*s_loops), factors=[None, nthreads])
            if self.bind:
                sch.bind(bx, "blockIdx.x")
                sch.bind(tx, "threadIdx.x")
            if r_loops:
                reductions.append((blk, r_loops[0]))
        for blk, loop in reductions:
            sch.decompose_reduction(blk, loop)
        return sch


def float_rules():
    from tvm.s_tir import dlight as dl

    return [dl.gpu.Matmul(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def _int_rules():
    from tvm.s_tir import dlight as dl

    return [dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def schedule_module(mod, target):
    """Schedule every unscheduled PrimFunc of a lowered module for ``target`` (CUDA); returns the module.

    ``mod.attrs`` gets nothing new; each scheduled function carries ``tirx.is_scheduled`` and
    ``zsq.gpu_rule`` (the dlight rule used).  A function no rule schedules raises ``RuntimeError``
    naming it (a GPU kernel without thread bindings would fail later with a less clear message).
    """
    from tvm import s_tir, tirx

    out = {}
    with target:
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or func.attrs is not None and func.attrs.get("tirx.is_scheduled"):
                continue
            if not _is_int_func(func):
                rules = float_rules()
            elif inlined_size(s_tir.Schedule(func)) > INLINE_SIZE_LIMIT:
                rules = [LinearInlineFallback()]  # dlight's inline-everything would blow up (see the class)
            else:
                rules = _int_rules()
            done = None
            errors = []
            for rule in rules:
                try:
                    sch = rule.apply(func, target, False)
                except Exception as e:  # a rule that matches but cannot schedule: try the next one
                    errors.append(f"{type(rule).__name__}: {type(e).__name__}")
                    continue
                if sch is None:
                    continue
                sch = sch[0] if isinstance(sch, (list, tuple)) else sch
                done = (sch.mod["main"].with_attr("tirx.is_scheduled", True)
                        .with_attr("zsq.gpu_rule", type(rule).__name__))
                break
            if done is None:
                raise RuntimeError(f"no GPU schedule rule applies to {gv.name_hint} ({'; '.join(errors) or 'no match'})")
            out[gv] = done
    import tvm

    mod = tvm.IRModule({gv: f for gv, f in mod.functions.items()}, attrs=mod.attrs, global_infos=mod.global_infos)
    for gv, f in out.items():
        mod[gv] = f
    return mod


def relax_pipeline(target):
    """TVM's CUDA Relax pipeline minus legalization/dlight (done by lower + :func:`schedule_module`)."""
    import tvm
    from tvm.relax.backend.cuda import pipeline as cp

    @tvm.transform.module_pass(opt_level=0, name="ZsqCudaFinish")
    def _finish(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential(cp.library_dispatch_passes(target) + cp.dataflow_lower_passes(target)
                                           + cp.finalize_passes(target))
            return seq(mod)

    return _finish


def compile_lowered(lowered, target):
    """Schedule + ``tvm.compile`` a lowered module for a CUDA target (``TargetSpec.compile`` of the CUDA targets).

    The TIR pipeline is TVM's with :func:`relax_passes.tir_int_division.LowerDataDivision`: a division by a
    run-time divisor (the Conformer's LayerNorm, softmax, sigmoid) becomes an integer long division instead of
    nvcc's float-reciprocal expansion, so the SASS of every kernel but the input quantize / output dequantize
    is integer-only."""
    import tvm

    mod = schedule_module(lowered, target)
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(target), tir_pipeline=register_pipeline())


# --------------------------------------------------------------------------- evidence on a built model
BOUNDARY_KERNELS = ("zsq_input_quantize", "zsq_output_dequantize")  # the only float code by design


def _boundary(name: str) -> bool:
    return any(name.startswith(b) for b in BOUNDARY_KERNELS)


def cuda_kernels(src: str) -> dict[str, str]:
    """``{kernel name: its definition text}`` of the ``__global__`` kernels of a CUDA source."""
    import re

    out = {}
    pat = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^;{]*\)\s*\{')
    ms = list(pat.finditer(src))
    for i, m in enumerate(ms):
        end = ms[i + 1].start() if i + 1 < len(ms) else len(src)
        out[m.group(1)] = src[m.start():end]
    return out


def sass_functions(sass_text: str) -> dict[str, str]:
    """``{function name: SASS}`` from a ``cuobjdump -sass`` listing."""
    import re

    parts = re.split(r"\n\s*Function : (\S+)\n", sass_text)
    return dict(zip(parts[1::2], parts[2::2]))


def integer_region_report(src: str, sass_text: str | None = None) -> dict:
    """Float use outside the input-quantize / output-dequantize kernels of a whole-model CUDA build.

    ``ok``: no float type in the CUDA C of any other kernel (and, given the SASS, no float instruction in
    any other function); ``int8_ops``: counts of ``IDP.4A`` / ``IMMA`` instructions in the SASS.
    """

    kernels = cuda_kernels(src)
    bad_src = {n: sorted(set(CUDA_FLOAT_TYPES.findall(body))) for n, body in kernels.items() if not _boundary(n)}
    bad_src = {n: v for n, v in bad_src.items() if v}
    rep = {"kernels": len(kernels), "boundary_kernels": sorted(n for n in kernels if _boundary(n)),
           "float_in_source": bad_src}
    if sass_text is not None:
        funcs = sass_functions(sass_text)
        bad = {n: sorted(set(sass_float_ops(t))) for n, t in funcs.items() if not _boundary(n)}
        rep["sass_functions"] = len(funcs)
        rep["float_in_sass"] = {n: v for n, v in bad.items() if v}
        rep["int8_ops"] = sass_counts(sass_text)
    rep["ok"] = not rep["float_in_source"] and not rep.get("float_in_sass")
    return rep

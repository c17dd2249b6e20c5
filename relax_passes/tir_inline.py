"""TIR module pass: inline the elementwise blocks of an unscheduled integer kernel into their one consumer.

Why: after ``LegalizeOps`` + ``FuseTIR`` a fused elementwise chain (the Conformer's integer exp in its softmax,
its LayerNorm's scale chain, the requantize glue) is one PrimFunc, but each op is still its own block writing a
full-size intermediate buffer.  Nothing on the CPU path schedules the kernels that our hand-written kernels and
the tuning log leave, so TVM compiles them as they are: the softmax's exp over ``[1, 4, 250, 250]`` int64
made 13 passes over 2 MB buffers (0.56 ms per call; inlined 0.25 ms, same bits).

Which blocks: an elementwise (all data-parallel iterators) block with exactly one consumer that loads its
result *once*.  Then the consumer's expression grows by addition only.  A block loaded twice stays a
buffer: the integer square root's Newton step ``x' = (x + v // x) >> 1`` reads ``x`` twice, and inlining eight
such steps doubles the expression eight times (full inlining of a LayerNorm did not finish in 10 minutes).
On the CPU (:class:`InlineOnceRead`) the consumer must also read the element the producer wrote at the same
iterators (:func:`pointwise_pair`): inlining a per-row chain into a per-element block recomputes it per
element, and inlining a pad / strided slice into a stack (the Conformer's im2col) made that kernel 13x slower.

IR before (one fused kernel, three blocks)::

    for i in range(n):  a[i] = x[i] - m[0]              # block "T_subtract"
    for i in range(n):  b[i] = min(a[i], c)             # block "T_minimum"
    for i in range(n):  y[i] = (b[i] * k) >> s          # block "T_right_shift"

after::

    for i in range(n):  y[i] = (min(x[i] - m[0], c) * k) >> s

Exact by construction (``compute_inline`` substitutes the producer's expression).  :func:`inline_once_read`
works on a schedule (the CUDA build's :class:`zsq_tvm.backends.cuda.pipeline.LinearInlineFallback` starts from it);
:class:`InlineOnceRead` applies it to every PrimFunc of a module that is neither scheduled yet
(``tirx.is_scheduled``: tuned or hand-scheduled) nor one of our kernels (``zsq.kernel``).  No parallel loops and
no explicit vectorisation are added: LLVM vectorises the inlined loop better than a TIR split does, and
TVM's parallel lambda stops that (docs/results.md, Session 6).
"""

from __future__ import annotations

import tvm

__all__ = ["loads_of", "injective", "inline_once_read", "InlineOnceRead"]


def loads_of(block, buf) -> int:
    """How many times ``block`` (a TIR SBlock) loads ``buf``."""
    import tvm_ffi
    from tvm.ir.expr import TensorLoad  # TVM 0.27's buffer load (``.source`` is the buffer)

    n = [0]

    def visit(node):
        if isinstance(node, TensorLoad) and node.source.same_as(buf):
            n[0] += 1

    tvm_ffi.structural_walk(block.body, visit)
    return n[0]


def injective(sch, blk) -> bool:
    """One output and only data-parallel iterators (no reduction)."""
    b = sch.get(blk)
    return len(b.writes) == 1 and all(int(iv.iter_type) == 0 for iv in b.iter_vars)  # 0: data parallel


def _identity(indices, block) -> bool:
    """``indices`` are exactly ``block``'s iterators, in order (``b[v0, v1, ...]`` inside the block)."""
    ivs = [iv.var for iv in block.iter_vars]
    return len(indices) == len(ivs) and all(i.same_as(v) for i, v in zip(indices, ivs))


def pointwise_pair(producer, consumer, buf) -> bool:
    """``producer`` writes ``buf[its iterators]`` and ``consumer`` loads ``buf`` only at its own iterators: the
    same element, no broadcast (which would recompute the producer per consumer element), no gather (a
    pad / slice / stack, whose index arithmetic would then run for every element)."""
    import tvm_ffi
    from tvm.ir.expr import TensorLoad

    body = producer.body
    if not hasattr(body, "indices") or not _identity(body.indices, producer):
        return False
    ok = [True]

    def visit(node):
        if isinstance(node, TensorLoad) and node.source.same_as(buf) and not _identity(node.indices, consumer):
            ok[0] = False

    tvm_ffi.structural_walk(consumer.body, visit)
    return ok[0]


def inline_once_read(sch, pointwise_only: bool = False) -> int:
    """Inline, to a fixed point, every elementwise block whose one consumer loads it once; returns how many.
    ``pointwise_only``: also require :func:`pointwise_pair` (the CPU rule; the GPU rule inlines gathers and
    broadcasts too, one thread per element)."""
    n = 0
    changed = True
    while changed:
        changed = False
        for blk in sch.get_child_blocks(sch.get_sblock("root")):
            consumers = sch.get_consumers(blk)
            if len(consumers) != 1 or not injective(sch, blk):
                continue
            buf = sch.get(blk).writes[0].source
            if loads_of(sch.get(consumers[0]), buf) > 1:
                continue
            if pointwise_only and not pointwise_pair(sch.get(blk), sch.get(consumers[0]), buf):
                continue
            try:
                sch.compute_inline(blk)
            except Exception:  # noqa: BLE001 - not inlinable here (e.g. its consumer reads it at other indices)
                continue
            n += 1
            changed = True
            break
    return n


@tvm.transform.module_pass(opt_level=0, name="InlineOnceRead")
class InlineOnceRead:
    """Module pass: :func:`inline_once_read` on every unscheduled, non-kernel PrimFunc (module doc)."""

    def __init__(self):
        self.inlined: dict[str, int] = {}  # function name -> blocks inlined (after the pass ran)

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        from tvm import s_tir, tirx

        self.inlined = {}
        out = {}
        for gv, f in mod.functions_items():
            if not isinstance(f, tirx.PrimFunc):
                continue
            attrs = f.attrs
            if attrs is not None and (attrs.get("tirx.is_scheduled", False) or "zsq.kernel" in attrs):
                continue
            sch = s_tir.Schedule(f)
            n = inline_once_read(sch, pointwise_only=True)
            if n:
                out[gv] = sch.mod["main"]
                self.inlined[gv.name_hint] = n
        if not out:
            return mod
        new = tvm.IRModule({gv: f for gv, f in mod.functions.items()}, attrs=mod.attrs,
                           global_infos=mod.global_infos)
        for gv, f in out.items():
            new[gv] = f
        return new

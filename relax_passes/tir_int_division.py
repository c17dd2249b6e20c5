"""Integer division by a run-time divisor, without the float units: a TIR pass for GPU kernels.

A GPU has no integer divider.  For ``a // b`` with a divisor known only at run time (the Conformer's
LayerNorm ``d / std`` and Newton square root ``v // x``, its softmax ``2^54 // sum``, the sigmoid's
``1 / (1 + e)``), nvcc emits a float-reciprocal estimate with integer corrections (``I2F``, ``MUFU.RCP``,
``F2I``): exact, but it runs on the float units, so the kernel is not integer-only.  Division by a
*constant* is fine (nvcc multiplies by a fixed-point reciprocal on the integer units).

:func:`LowerDataDivision` rewrites every integer ``floordiv``/``floormod``/``truncdiv``/``truncmod`` whose
divisor is not a constant into a restoring (shift-and-subtract) long division, so the result is the same
integer and every instruction is an integer one.  Before (lowered device TIR)::

    C[i] = T.floordiv(A[i], B[i]) + 1

after (``div0_s``/``div0_u`` local buffers; ``n`` bits, ``U`` = unsigned ``n``-bit)::

    div0_s[0] = A[i]; div0_s[1] = B[i]                        # each operand evaluated once
    div0_u[0] = |div0_s[0]|; div0_u[1] = |div0_s[1]|           # magnitudes as U (exact for INT_MIN)
    <div0_l[0], div0_l[1] = bit lengths of the magnitudes>     # 6 shift steps each, branch-free
    L = max(bits(|a|) - bits(|b|) + 1, 0)                      # quotient bit count
    div0_u[2] = 0; div0_u[3] = |a| >> L                        # q; r < |b| (top bits(|b|) - 1 bits of |a|)
    for k in range(L):                                         # one quotient bit per step, high to low
        r = (r << 1) | (|a| >> (L - 1 - k)) & 1
        ge = r >= |b| ; r -= ge ? |b| : 0 ; q |= ge << (L - 1 - k)
    <div0_s[2], div0_s[3] = sign-fixed q, r>                   # truncated quotient, remainder (sign of a)
    C[i] = (div0_s[2] - adjust) + 1                            # adjust = r != 0 and sign(r) != sign(b): floor

Why it is exact: before each step ``r < |b|``, so ``2r + 1 < 2|b| <= 2^n`` fits ``U``, and ``r - |b| < |b|``
keeps the invariant; after the last step ``|a| = q |b| + r`` with ``0 <= r < |b|``.  The floor form follows
from the truncated one (``q_f = q_t - 1`` and ``r_f = r_t + b`` when ``r_t != 0`` has the sign opposite to
``b``).  ``b = 0`` is undefined in TIR (C's ``/``); here it gives some integer, never a trap.  Cost: about
``8 (bits(a / b) + 12)`` integer ops per division instead of ~25 instructions on the float units.

The operands are evaluated once, before the statement that used them, in the same order (a division in
the divisor of another is rewritten first).  Refused with :class:`NotImplementedError` (never silently left
in place): a vector (``lanes > 1``) division, and a division inside a lazily evaluated branch
(``if_then_else``, ``&&``, ``||``: hoisting it could read memory that the branch guards) or inside an
expression ``Let``.  None occurs in our kernels.

Use it in any TVM flow: ``tvm.compile(mod, target, tir_pipeline=register_pipeline())`` (TVM's default
S-TIR pipeline with this pass ahead of the device ``LowerIntrin``), or apply ``LowerDataDivision()`` to an
``IRModule`` of lowered PrimFuncs.  :func:`zsq_tvm.backends.cuda.pipeline.compile_lowered` uses the pipeline for
every CUDA build.
"""

from __future__ import annotations

import functools

__all__ = ["LowerDataDivision", "lower_func", "register_pipeline", "TIR_PIPELINE", "data_divisions"]

TIR_PIPELINE = "zsq_no_data_division"


def _is_data_division(node) -> bool:
    from tvm import tirx

    return (isinstance(node, (tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod))
            and _dtype(node).startswith(("int", "uint")) and not isinstance(node.b, tirx.IntImm))


def _dtype(expr) -> str:
    """``"int64"``, ``"int32x4"``, ... of a TIR expression (TVM 0.27 keeps it in ``expr.ty``)."""
    dt = getattr(expr.ty, "dtype", expr.ty)
    lanes = getattr(dt, "lanes", 1)
    base = str(dt).split("x")[0]
    return base if lanes == 1 else f"{base}x{lanes}"


def data_divisions(func) -> int:
    """How many integer divisions/modulos by a non-constant divisor a PrimFunc (or any TIR node) has."""
    import tvm_ffi

    n = [0]
    tvm_ffi.structural_walk(getattr(func, "body", func), lambda x: n.__setitem__(0, n[0] + _is_data_division(x)))
    return n[0]


def _check_hoistable(expr) -> None:
    """Refuse divisions under a lazy branch or an expression ``Let`` (see the module docstring)."""
    import tvm_ffi
    from tvm import tirx
    from tvm.ir.expr import Call

    def lazy_parts(node):
        if isinstance(node, (tirx.And, tirx.Or)):
            return [node.b]
        if isinstance(node, Call) and str(getattr(node.op, "name", "")).endswith(".if_then_else"):
            return list(node.args[1:])
        if isinstance(node, tirx.Let):
            return [node.body]
        return []

    bad = []

    def visit(node):
        for part in lazy_parts(node):
            if data_divisions(part):
                what = node.op.name if isinstance(node, Call) else type(node).__name__
                bad.append(f"a division by a run-time divisor inside a lazily evaluated {what} cannot be hoisted "
                           f"safely: {part}")

    tvm_ffi.structural_walk(expr, visit)
    if bad:
        raise NotImplementedError(f"LowerDataDivision: {bad[0]}")


class _Rewriter:
    """Per-function state: unique buffer names and the SeqStmts this pass created (flattened into their parent
    so that a rewritten ``Bind`` keeps its scope)."""

    def __init__(self):
        self.count = 0
        self.made: set = set()
        self.errors: list = []  # raised after the FFI map returns (an exception inside it loses its type)

    def guarded(self, fn):
        def call(node):
            try:
                return fn(node)
            except NotImplementedError as e:
                self.errors.append(e)
                return node
        return call

    # ------------------------------------------------------------------ one division
    def _divide(self, node, out: list):
        """Statements computing ``node`` (a data division) into ``out``; returns the expression of its value."""
        from tvm import tirx

        dt = _dtype(node)  # scalar: :meth:`expr` refused vectors
        signed = dt.startswith("int")
        bits = int(dt[len("int" if signed else "uint"):])
        udt = f"uint{bits}"
        k = self.count
        self.count += 1
        s = tirx.decl_buffer((4,), dt, f"div{k}_s", scope="local")     # a, b, truncated q, truncated r
        u = tirx.decl_buffer((5,), udt, f"div{k}_u", scope="local")    # |a|, |b|, q, r, scratch
        c = tirx.decl_buffer((2,), "int32", f"div{k}_l", scope="local")  # bit lengths of |a|, |b|

        def S(i):
            return tirx.BufferLoad(s, [tirx.IntImm("int32", i)])

        def Ul(i):
            return tirx.BufferLoad(u, [tirx.IntImm("int32", i)])

        def C(i):
            return tirx.BufferLoad(c, [tirx.IntImm("int32", i)])

        def st(buf, i, v):
            out.append(tirx.BufferStore(buf, v, [tirx.IntImm("int32", i)]))

        def uc(v):
            return tirx.IntImm(udt, v)

        def sc(v):
            return tirx.IntImm(dt, v)

        def i32(v):
            return tirx.IntImm("int32", v)

        # No operation below overflows, signed or unsigned: TVM emits LLVM ``add nuw``/``sub nsw`` (overflow is
        # poison) and its simplifier folds unsigned ``0 - x`` to 0, so two's-complement tricks are not used.
        def magnitude(v):  # |v| as U, exact for the most negative value: ~v + 1 = -v, and ~v >= 0
            if not signed:
                return v
            return tirx.Select(tirx.LT(v, sc(0)), tirx.Cast(udt, tirx.bitwise_not(v)) + uc(1), tirx.Cast(udt, v))

        def signed_of(mag, negative):  # -mag or mag as D (mag <= 2^(bits-1)); -mag = ~(mag - 1) for mag >= 1
            neg = tirx.Select(tirx.EQ(mag, uc(0)), sc(0), tirx.bitwise_not(tirx.Cast(dt, mag - uc(1))))
            return tirx.Select(negative, neg, tirx.Cast(dt, mag))

        out.extend([tirx.AllocBuffer(s), tirx.AllocBuffer(u), tirx.AllocBuffer(c)])
        st(s, 0, node.a)
        st(s, 1, node.b)
        st(u, 0, magnitude(S(0)))
        st(u, 1, magnitude(S(1)))
        for slot in (0, 1):  # bit length by a branch-free binary search: 32, 16, ..., 1 (for 64 bits)
            st(u, 4, Ul(slot))
            st(c, slot, i32(0))
            step = bits // 2
            while step >= 1:
                h = tirx.Select(tirx.NE(tirx.shift_right(Ul(4), uc(step)), uc(0)), i32(1), i32(0))
                st(c, slot, C(slot) + h * i32(step))
                st(u, 4, tirx.shift_right(Ul(4), tirx.Cast(udt, h * i32(step))))
                step //= 2
            st(c, slot, C(slot) + tirx.Cast("int32", tirx.Min(Ul(4), uc(1))))
        L = tirx.Var(f"div{k}_len", "int32")
        out.append(tirx.Bind(L, tirx.Max(C(0) - C(1) + i32(1), i32(0))))
        st(u, 2, uc(0))
        # |a| >> L, defined for L == bits too (only when b == 0: bits(|b|) = 0)
        st(u, 3, tirx.Select(tirx.LT(L, i32(bits)),
                             tirx.shift_right(Ul(0), tirx.Cast(udt, tirx.Min(L, i32(bits - 1)))), uc(0)))
        it = tirx.Var(f"div{k}_i", "int32")
        bit = tirx.Cast(udt, L - i32(1) - it)
        body = [
            tirx.BufferStore(u, tirx.bitwise_or(tirx.shift_left(Ul(3), uc(1)),
                                                tirx.bitwise_and(tirx.shift_right(Ul(0), bit), uc(1))),
                             [i32(3)]),
            tirx.BufferStore(u, tirx.Select(tirx.GE(Ul(3), Ul(1)), uc(1), uc(0)), [i32(4)]),
            tirx.BufferStore(u, Ul(3) - Ul(4) * Ul(1), [i32(3)]),
            tirx.BufferStore(u, tirx.bitwise_or(Ul(2), tirx.shift_left(Ul(4), bit)), [i32(2)]),
        ]
        out.append(tirx.For(it, i32(0), L, tirx.ForKind.SERIAL, tirx.SeqStmt(body)))
        # truncated quotient (negative when the signs differ) and remainder (sign of a)
        if signed:
            st(s, 2, signed_of(Ul(2), tirx.LT(tirx.bitwise_xor(S(0), S(1)), sc(0))))  # signs differ
            st(s, 3, signed_of(Ul(3), tirx.LT(S(0), sc(0))))
        else:
            st(s, 2, Ul(2))
            st(s, 3, Ul(3))
        if isinstance(node, tirx.Div):
            return S(2)
        if isinstance(node, tirx.Mod):
            return S(3)
        if not signed:  # floor == trunc for unsigned
            return S(2) if isinstance(node, tirx.FloorDiv) else S(3)
        off = tirx.Select(tirx.And(tirx.NE(S(3), sc(0)), tirx.LT(tirx.bitwise_xor(S(3), S(1)), sc(0))),
                          sc(1), sc(0))
        if isinstance(node, tirx.FloorDiv):
            return S(2) - off
        return S(3) + off * S(1)

    # ------------------------------------------------------------------ one statement
    def expr(self, e, out: list):
        """``e`` with every data division replaced (inner ones first); their statements appended to ``out``."""
        import tvm_ffi
        from tvm import tirx

        if e is None or not data_divisions(e):
            return e
        _check_hoistable(e)
        vec = []
        tvm_ffi.structural_walk(e, lambda n: vec.append(n) if _is_data_division(n) and "x" in _dtype(n) else None)
        if vec:  # checked here: an exception raised inside the FFI map below would lose its type
            raise NotImplementedError(f"LowerDataDivision: vector division {_dtype(vec[0])} ({vec[0]})")

        def on_div(node):
            return self._divide(node, out) if _is_data_division(node) else node

        return tvm_ffi.structural_map(e, ((tirx.FloorDiv, tirx.FloorMod, tirx.Div, tirx.Mod), on_div))

    def wrap(self, pre: list, stmt):
        from tvm import tirx

        seq = tirx.SeqStmt(pre + [stmt])
        self.made.add(seq)
        return seq

    def stmt(self, node):
        from tvm import tirx

        pre: list = []
        if isinstance(node, tirx.BufferStore):
            new = tirx.BufferStore(node.buffer, self.expr(node.value, pre), [self.expr(i, pre) for i in node.indices])
        elif isinstance(node, tirx.Bind):
            new = tirx.Bind(node.var, self.expr(node.value, pre))
        elif isinstance(node, tirx.Evaluate):
            new = tirx.Evaluate(self.expr(node.value, pre))
        elif isinstance(node, tirx.IfThenElse):
            new = tirx.IfThenElse(self.expr(node.condition, pre), node.then_case, node.else_case)
        else:
            return node
        return self.wrap(pre, new) if pre else node

    def seq(self, node):
        from tvm import tirx

        flat, changed = [], False
        for s in node.seq:
            if s in self.made:
                flat.extend(s.seq)
                changed = True
            else:
                flat.append(s)
        return tirx.SeqStmt(flat) if changed else node

    @staticmethod
    def other(node):
        """Statements whose own expressions the pass does not rewrite: they must have no data division."""
        from tvm import tirx

        for field in ("min", "extent", "value", "condition", "message"):
            v = getattr(node, field, None)
            if isinstance(v, tirx.Expr) and data_divisions(v):
                raise NotImplementedError(f"LowerDataDivision: a division by a run-time divisor in the "
                                          f"{field} of a {type(node).__name__} is not supported")
        return node


def lower_func(func):
    """One PrimFunc with its data divisions rewritten (unchanged when it has none)."""
    import tvm_ffi
    from tvm import tirx

    if not data_divisions(func):
        return func
    rw = _Rewriter()
    body = tvm_ffi.structural_map(func.body, [
        ((tirx.BufferStore, tirx.Bind, tirx.Evaluate, tirx.IfThenElse), rw.guarded(rw.stmt)),
        ((tirx.For, tirx.AttrStmt, tirx.AssertStmt, tirx.While), rw.guarded(rw.other)),
        (tirx.SeqStmt, rw.seq),
    ])
    if rw.errors:
        raise rw.errors[0]
    left = data_divisions(body)
    if left:
        raise RuntimeError(f"LowerDataDivision left {left} division(s) by a run-time divisor")
    return func.with_body(body)


def LowerDataDivision():
    """The module pass: :func:`lower_func` on every PrimFunc (use it on lowered, flattened TIR)."""
    import tvm
    from tvm import tirx

    @tvm.transform.module_pass(opt_level=0, name="ZsqLowerDataDivision")
    def _pass(mod, _ctx):
        funcs, changed = {}, False
        for gv, f in mod.functions_items():
            if isinstance(f, tirx.PrimFunc):
                g = lower_func(f)
                changed |= not g.same_as(f)
                funcs[gv] = g
            else:
                funcs[gv] = f
        return tvm.IRModule(funcs, attrs=mod.attrs) if changed else mod

    return _pass


@functools.lru_cache(maxsize=None)
def register_pipeline() -> str:
    """Register :data:`TIR_PIPELINE`: TVM's default S-TIR pipeline with :func:`LowerDataDivision` after the
    lowering (so on host and device functions), ahead of ``LowerIntrin``.  Returns the name for
    ``tir_pipeline=``."""
    import tvm
    from tvm.s_tir import pipeline as s_tir_pipeline
    from tvm.tirx import compilation_pipeline

    def factory(**_kwargs):
        lower, finalize_host, finalize_device = s_tir_pipeline.default_s_tir_pipeline()
        return tvm.transform.Sequential([lower, LowerDataDivision()]), finalize_host, finalize_device

    compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, factory)
    return TIR_PIPELINE

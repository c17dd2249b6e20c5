"""``relax_passes.tir_int_division.LowerDataDivision``: division by a run-time divisor as an integer long division.

Checked: the result equals numpy's floor / C's truncated division and modulo bit for bit, for signed and
unsigned 32/64-bit operands including the extreme values; constant divisors are left to the compiler; the
pass composes in a ``tvm.transform.Sequential``; what it cannot hoist safely is refused by name; and on sm_75
the SASS of a kernel that divides by data loses its float instructions (``I2F``/``MUFU``/``F2I``).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("tvm")

from relax_passes import tir_int_division as D  # noqa: E402

N = 2048


def _kernel(dtype: str):
    from tvm.script import tirx as T

    @T.prim_func
    def f(A: T.Buffer((N,), dtype), B: T.Buffer((N,), dtype), Q: T.Buffer((N,), dtype), R: T.Buffer((N,), dtype),
          TQ: T.Buffer((N,), dtype), TR: T.Buffer((N,), dtype)):
        for i in range(N):
            Q[i] = T.floordiv(A[i], B[i])
            R[i] = T.floormod(A[i], B[i])
            TQ[i] = T.truncdiv(A[i], B[i])
            TR[i] = T.truncmod(A[i], B[i])

    return f


def _operands(dtype: str, seed: int = 0):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    a = rng.integers(info.min, info.max, N, dtype=dtype, endpoint=True)
    b = rng.integers(info.min, info.max, N, dtype=dtype, endpoint=True)
    small = min(info.max, 300)
    a[:600] = rng.integers(-small if info.min < 0 else 0, small, 600)
    b[:600] = rng.integers(-20 if info.min < 0 else 1, 20, 600)
    b[600:900] = rng.integers(1, 2**12, 300)  # short quotients and long ones
    edge = [(info.min, 1), (info.max, 1), (info.max, info.max), (info.min, info.max), (0, 5), (1, info.max)]
    if info.min < 0:
        edge += [(info.min, 2), (info.min, info.min), (info.max, info.min), (-1, info.min), (info.min + 1, -1),
                 (-7, 2), (7, -2), (-7, -2), (-8, 2), (-1, 3)]
    for k, (x, y) in enumerate(edge):
        a[900 + k], b[900 + k] = x, y
    b[b == 0] = 3
    return a, b


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint64", "uint32", "int16"])
def test_long_division_equals_floor_and_trunc_division(dtype):
    import tvm

    ex = tvm.compile(tvm.IRModule({"main": _kernel(dtype)}), target="llvm", tir_pipeline=D.register_pipeline())
    a, b = _operands(dtype)
    outs = [tvm.runtime.tensor(np.zeros(N, dtype)) for _ in range(4)]
    ex["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), *outs)
    A, B = a.astype(object), b.astype(object)
    tq = np.array([(abs(x) // abs(y)) * (1 if (x < 0) == (y < 0) else -1) for x, y in zip(A, B)], dtype=object)
    want = [A // B, A % B, tq, A - tq * B]
    for name, got, w in zip(("floordiv", "floormod", "truncdiv", "truncmod"), outs, want):
        got = got.numpy().astype(object)
        bad = np.nonzero(got != w)[0]
        assert bad.size == 0, (name, [(a[i], b[i], got[i], w[i]) for i in bad[:5]])


def test_the_pass_removes_only_run_time_divisors():
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def f(A: T.Buffer((64,), "int64"), B: T.Buffer((64,), "int64"), C: T.Buffer((64,), "int64")):
        for i in range(64):
            C[i] = T.floordiv(A[i], 7) + T.floordiv(A[T.floordiv(i, 2)], B[i] + T.floordiv(A[i], B[i]))

    assert D.data_divisions(f) == 2
    mod = tvm.transform.Sequential([D.LowerDataDivision()])(tvm.IRModule({"main": f}))
    g = mod["main"]
    assert D.data_divisions(g) == 0
    text = g.script()
    assert "T.floordiv(A[i], T.int64(7))" in text or "A[i] // T.int64(7)" in text  # constant: left to the compiler
    ex = tvm.compile(tvm.IRModule({"main": g}), target="llvm")
    rng = np.random.default_rng(1)
    a = rng.integers(-2**40, 2**40, 64)
    b = rng.integers(1, 2**20, 64)
    c = tvm.runtime.tensor(np.zeros(64, "int64"))
    ex["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    A, B = a.astype(object), b.astype(object)
    want = A // 7 + A[np.arange(64) // 2] // (B + A // B)
    assert (c.numpy().astype(object) == want).all()


def test_unsafe_divisions_are_refused_by_name():
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def guarded(A: T.Buffer((64,), "int64"), B: T.Buffer((64,), "int64"), C: T.Buffer((64,), "int64")):
        for i in range(64):
            C[i] = T.if_then_else(B[i] > T.int64(0), T.floordiv(A[i], B[i]), T.int64(0))

    with pytest.raises(NotImplementedError, match="lazily evaluated .*if_then_else"):
        D.lower_func(guarded)
    with pytest.raises(Exception, match="lazily evaluated .*if_then_else"):  # through the pass (TVM re-raises)
        D.LowerDataDivision()(tvm.IRModule({"main": guarded}))

    @T.prim_func
    def vec(A: T.Buffer((64,), "int32"), B: T.Buffer((64,), "int32"), C: T.Buffer((64,), "int32")):
        C[T.Ramp(0, 1, 4)] = T.floordiv(A[T.Ramp(0, 1, 4)], B[T.Ramp(0, 1, 4)])

    with pytest.raises(NotImplementedError, match="vector division int32x4"):
        D.lower_func(vec)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_sm75_sass_of_a_dividing_kernel_has_no_float(tmp_path):
    import tvm
    from tvm.script import tirx as T

    from zsq_tvm.backends.cuda import int8_gemm as g

    cuobjdump = g.find_cuobjdump()
    if cuobjdump is None:
        pytest.skip("needs cuobjdump (nvidia-cuda-cuobjdump)")

    @T.prim_func
    def f(A: T.Buffer((256,), "int64"), B: T.Buffer((256,), "int64"), C: T.Buffer((256,), "int64"),
          E: T.Buffer((256,), "int32")):
        for i in T.thread_binding(256, "threadIdx.x"):
            C[i] = T.floordiv(A[i], B[i]) + T.floormod(A[i], B[i] + T.int64(1))
            E[i] = T.floordiv(T.Cast("int32", A[i]), T.Cast("int32", B[i]))

    target = tvm.target.Target(g.SM75, host="llvm")
    floats = {}
    for pipe in ("default", D.register_pipeline()):
        src = g.cuda_source(tvm.compile(tvm.IRModule({"main": f}), target=target, tir_pipeline=pipe))
        (tmp_path / pipe).mkdir()
        floats[pipe] = set(g.sass_float_ops(g.sass(g.nvcc_cubin(src, str(tmp_path / pipe), arch="sm_75"), cuobjdump)))
    assert {"I2F", "MUFU"} <= floats["default"]  # what nvcc does with a division by a run-time divisor
    assert floats[D.TIR_PIPELINE] == set()

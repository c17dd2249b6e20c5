"""x86 AVX2 (no VNNI) integer kernels: the ``isa="avx2"`` variants of the ncw pointwise/conv, time-major
linear (``tk``), batched attention matmul and depthwise kernels (``vpmaddwd`` on int16 pairs), their Relax
rewrite and the ``x86-avx2`` target.

Bit-exact against the numpy oracle (``intmath.conv1d_int`` + ``intmath.requantize``) on QuartzNet/Jasper
shapes and awkward ones (odd K, odd taps, stride 2/4, dilation, int8 input, residual join, Tout = 1,
saturating outputs), with operands at the int8 extremes: ``vpmaddubsw`` would saturate on them, so an
accidental use of it fails here.  Compiling needs only LLVM (``-mcpu=haswell``); running needs AVX2.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import zsq_tvm  # noqa: E402
from relax_passes.reference import run_reference  # noqa: E402
from zsq_tvm.backends.x86.cpu import host_features  # noqa: E402
from zsq_tvm.backends.x86 import bmm  # noqa: E402
from zsq_tvm.backends.x86 import depthwise as dw  # noqa: E402
from zsq_tvm.backends.x86 import pointwise as pw  # noqa: E402
from zsq_tvm.backends.x86.avx2 import check_avx2_asm  # noqa: E402

needs_avx2 = pytest.mark.skipif("avx2" not in host_features(), reason="CPU lacks avx2 (/proc/cpuinfo flags)")


def _haswell():
    return tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})


def _operands(rng, shape, a_dtype):
    """Activations with the extreme rows a saturating int16 pair sum would get wrong (255 or -128 next to
    each other against weights of +-127)."""
    if a_dtype == "uint8":
        X = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        X = rng.integers(-128, 128, shape).astype(np.int8)
    X[0] = X.max() if a_dtype == "uint8" else -128
    X[-1] = X.min()
    return X


def _weights(rng, shape):
    """int8 weights with a row of +127 and a row of -127 (against the extreme activations above)."""
    W = rng.integers(-127, 128, shape).astype(np.int8)
    W[0] = 127
    W[-1] = -127
    return W


def _requant(rng, M):
    b = rng.integers(-30000, 30000, M).astype(np.int32)
    Mul = rng.integers(2**30, 2**31, M).astype(np.int64)
    Sh = rng.integers(34, 46, M).astype(np.int64)  # some outputs saturate, some land inside
    return b, Mul, Sh


PW_SPECS = [
    pw.PointwiseSpec(500, 256, 256, layout="ncw", isa="avx2"),  # QuartzNet block pointwise
    pw.PointwiseSpec(37, 65, 29, layout="ncw", isa="avx2", a_dtype="int8"),  # odd K, int8 input
    pw.PointwiseSpec(50, 64, 40, layout="ncw", isa="avx2", taps=11, pad_l=5, pad_r=5, out_dtype="uint8", qmin=0,
                     qmax=255),  # Jasper-style full conv
    pw.PointwiseSpec(20, 7, 3, layout="ncw", isa="avx2", taps=3, dilation=2, pad_l=2, pad_r=2, a_dtype="int8",
                     out_dtype="int16", qmin=-32767, qmax=32767),
    pw.PointwiseSpec(9, 9, 5, layout="ncw", isa="avx2", taps=9),  # Tout = 1
    pw.PointwiseSpec(33, 16, 24, layout="ncw", isa="avx2", rt=1, rm=8, out_dtype="int32", qmin=-2**30, qmax=2**30),
    pw.PointwiseSpec(37, 3, 17, layout="ncw", isa="avx2", taps=4, dilation=3, pad_l=9, stride=2),  # strided
]

TK_SPECS = [
    pw.PointwiseSpec(250, 144, 576, layout="tk", isa="avx2"),  # Conformer feed-forward, 10 s
    pw.PointwiseSpec(37, 65, 29, layout="tk", isa="avx2", a_dtype="int8", out_dtype="int16", qmin=-32767,
                     qmax=32767),  # odd K, M % 8, T % tile
    pw.PointwiseSpec(5, 1, 3, layout="tk", isa="avx2", a_dtype="int8", out_dtype="int32", qmin=-2**30, qmax=2**30),
]

BMM_SPECS = [
    bmm.BmmSpec(4, 250, 36, 250, a_dtype="int8", out_dtype="int32", qmin=-2**30, qmax=2**30 - 1, isa="avx2"),  # Q Kᵀ
    bmm.BmmSpec(4, 37, 37, 36, isa="avx2"),  # P V (uint8 probabilities)
    bmm.BmmSpec(3, 33, 71, 49, a_dtype="int8", out_dtype="uint8", qmin=0, qmax=255, rt=4, rm=2, isa="avx2"),
]

DW_SPECS = [
    dw.DepthwiseSpec(256, 500, 33, pad_l=16, pad_r=16, isa="avx2"),  # QuartzNet block
    dw.DepthwiseSpec(64, 1000, 33, stride=2, pad_l=16, pad_r=16, a_dtype="int8", isa="avx2"),  # C1, stride 2
    dw.DepthwiseSpec(48, 200, 87, dilation=2, pad_l=86, pad_r=86, isa="avx2"),  # C2: dilation 2
    dw.DepthwiseSpec(20, 61, 5, stride=4, dilation=2, pad_r=7, a_dtype="int8", isa="avx2"),
    dw.DepthwiseSpec(37, 45, 7, pad_l=3, pad_r=3, out_dtype="uint8", qmin=0, qmax=255, isa="avx2"),
    dw.DepthwiseSpec(16, 9, 9, isa="avx2"),  # Tout = 1
    dw.DepthwiseSpec(17, 100, 1, stride=2, out_dtype="int32", qmin=-2**30, qmax=2**30, isa="avx2"),
]


def test_avx2_kernels_use_vpmaddwd_not_saturating_vpmaddubsw():
    for lib in (pw.build(PW_SPECS[1], _haswell()), dw.build(DW_SPECS[1], _haswell())):
        asm = lib.mod.inspect_source("asm") if hasattr(lib, "mod") else lib.inspect_source("asm")
        assert check_avx2_asm(lib) > 0
        assert "vpmaddubsw" not in asm and "vpdpbusd" not in asm and "zmm" not in asm


def test_avx2_spec_rules():
    with pytest.raises(AssertionError):
        dw.DepthwiseSpec(8, 32, 5, stride=4, isa="avx2")  # 2-tap windows: stride must divide 2 x dilation
    s = pw.PointwiseSpec(40, 7, 5, layout="ncw", isa="avx2", a_dtype="int8")
    W = np.ones((5, 7), np.int8)
    assert pw.pack_weights(W, s).dtype == np.int16 and pw.pack_weights(W, s).shape[2] == 8
    assert np.array_equal(pw.fold_bias(W, np.arange(5), s), np.arange(5))  # no +128 shift on AVX2
    # tk: int32 words of two int16 halves, low half = even input channel, sign kept in each half
    t = pw.PointwiseSpec(4, 3, 9, layout="tk", isa="avx2")
    W = np.arange(-13, 14, dtype=np.int8).reshape(9, 3)
    Wp = pw.pack_weights(W, t)
    assert Wp.dtype == np.int32 and Wp.shape == (t.Mp // 8, t.Kp // 2, 8) == (2, 2, 8)
    lo, hi = (Wp << 16) >> 16, Wp >> 16
    assert np.array_equal(lo[0, 0], W[:8, 0]) and np.array_equal(hi[0, 0], W[:8, 1])
    assert np.array_equal(lo[0, 1], W[:8, 2]) and not hi[0, 1].any() and not Wp[1, :, 1:].any()
    assert bmm.BmmSpec(2, 5, 3, 7, a_dtype="int8", isa="avx2").offset == 0  # int16 holds int8 as it is


@needs_avx2
@pytest.mark.parametrize("spec", PW_SPECS, ids=lambda s: f"K{s.K}M{s.M}T{s.T}k{s.taps}d{s.dilation}-{s.a_dtype}-{s.out_dtype}")
def test_pointwise_avx2_bit_exact(spec):
    rng = np.random.default_rng(spec.K)
    X = _operands(rng, (spec.K, spec.T), spec.a_dtype)
    W = _weights(rng, (spec.M, spec.K, spec.taps))
    b, Mul, Sh = _requant(rng, spec.M)
    k = pw.PointwiseKernel(spec, W, b, Mul, Sh, target=_haswell())
    assert np.array_equal(k(X), pw.reference(spec, X, W, b, Mul, Sh))


@needs_avx2
@pytest.mark.parametrize("spec", TK_SPECS, ids=lambda s: f"T{s.T}K{s.K}M{s.M}-{s.a_dtype}-{s.out_dtype}")
def test_linear_tk_avx2_bit_exact(spec):
    rng = np.random.default_rng(spec.M)
    X = _operands(rng, (spec.T, spec.K), spec.a_dtype)
    W = _weights(rng, (spec.M, spec.K))
    b, Mul, Sh = _requant(rng, spec.M)
    k = pw.PointwiseKernel(spec, W, b, Mul, Sh, target=_haswell())
    assert check_avx2_asm(k.lib) > 0
    assert np.array_equal(k(X), pw.reference(spec, X, W, b, Mul, Sh))


@needs_avx2
@pytest.mark.parametrize("spec", BMM_SPECS, ids=lambda s: f"H{s.H}T{s.T}K{s.K}N{s.N}-{s.a_dtype}-{s.out_dtype}")
def test_bmm_avx2_bit_exact(spec):
    rng = np.random.default_rng(spec.K)
    lo, hi = (-128, 128) if spec.a_dtype == "int8" else (0, 256)
    A = rng.integers(lo, hi, (1, spec.H, spec.T, spec.K)).astype(spec.a_dtype)
    B = rng.integers(-128, 128, (1, spec.H, spec.K, spec.N)).astype(np.int8)
    A[0, 0, 0] = lo  # extremes: -128 x -128 (255 x -128) along a whole row
    B[0, 0, :, 0] = -128
    Mul = rng.integers(2**30, 2**31, spec.N).astype(np.int64)
    Sh = rng.integers(16, 24, spec.N).astype(np.int64)
    k = bmm.BmmKernel(spec, Mul, Sh, target=_haswell())
    assert check_avx2_asm(k.lib) > 0
    assert np.array_equal(k(A, B), bmm.reference(spec, A, B, Mul, Sh))


@needs_avx2
def test_pointwise_avx2_residual_bit_exact():
    spec = pw.PointwiseSpec(70, 48, 32, layout="ncw", isa="avx2", residual=True, req_qmin=-127, req_qmax=127,
                            out_dtype="uint8", qmin=0, qmax=255)
    rng = np.random.default_rng(7)
    X = _operands(rng, (48, 70), "uint8")
    W = rng.integers(-127, 128, (32, 48)).astype(np.int8)
    b, Mul, Sh = _requant(rng, 32)
    R = rng.integers(-200, 200, (32, 70)).astype(np.int32)
    k = pw.PointwiseKernel(spec, W, b, Mul, Sh, target=_haswell())
    assert np.array_equal(k(X, R), pw.reference(spec, X, W, b, Mul, Sh, R))


@needs_avx2
@pytest.mark.parametrize("spec", DW_SPECS, ids=lambda s: f"C{s.C}T{s.Tin}K{s.K}s{s.stride}d{s.dilation}-{s.a_dtype}-{s.out_dtype}")
def test_depthwise_avx2_bit_exact(spec):
    rng = np.random.default_rng(spec.C)
    X = _operands(rng, (spec.C, spec.Tin), spec.a_dtype)
    W = _weights(rng, (spec.C, spec.K))
    b, Mul, Sh = _requant(rng, spec.C)
    k = dw.DepthwiseKernel(spec, W, b, Mul, Sh, target=_haswell())
    assert np.array_equal(k(X), dw.reference(spec, X, W, b, Mul, Sh))


@needs_avx2
def test_x86_avx2_target_every_conv_on_avx2_kernels_bit_exact():
    """The shipped QuartzNet-5x5 (int16 logits) built for ``x86-avx2``: no conv1d left to the default
    lowering, every hand kernel is an AVX2 one, integer-only, equal to the numpy reference bit for bit."""
    from relax_passes._util import bindings, call_op_name
    from zsq_tvm.targets import get_target

    q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(frames=64, out_bits=16))
    mod = get_target("x86-avx2").prepare(q.mod)
    assert not any(call_op_name(b.value) == "nn.conv1d" for b in bindings(mod["main"]))
    kernels = [str(f.attrs["zsq.kernel"]) for _, f in mod.functions.items()
               if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "zsq.kernel" in f.attrs]
    assert kernels and set(kernels) <= {"x86_avx2_pointwise", "x86_avx2_depthwise"}
    b = zsq_tvm.compile(q, target="x86-avx2")
    assert b.integer_only["ok"] is True
    mel = np.random.default_rng(11).standard_normal((1, 64, 64)).astype(np.float32) * 2
    assert np.array_equal(b.run(mel), run_reference(q.mod, mel))


@needs_avx2
def test_x86_avx2_conformer_every_matmul_and_conv_on_avx2_kernels_bit_exact():
    """conformer-ctc-small for ``x86-avx2``: the subsampling conv2d (as im2col + matmul), every linear layer
    and every attention matmul on an AVX2 kernel (no matmul or conv left to the default lowering), no VNNI
    kernel, integer-only, equal to the numpy reference bit for bit."""
    from tvm import relax

    from zsq_tvm.build import compile_relax

    q = zsq_tvm.quantize("conformer-ctc-small", zsq_tvm.QuantConfig(frames=64, time_mask=False))  # main(mel) alone
    ex, lowered, report, _ = compile_relax(q.mod, "x86-avx2")  # one build, inspected and run
    funcs = {gv.name_hint: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    kernels = {str(f.attrs["zsq.kernel"]) for f in funcs.values() if f.attrs is not None and "zsq.kernel" in f.attrs}
    assert {"x86_avx2_pointwise", "x86_avx2_depthwise", "x86_avx2_bmm", "x86_avx2_bmm_pack"} <= kernels
    assert not any("vnni" in k for k in kernels)
    default = [n for n in funcs if not n.startswith("zsq_")]
    assert not [n for n in default if "matmul" in n or "conv" in n], default
    assert any(n.startswith("zsq_avx2_linear_") for n in funcs)
    assert report["ok"] is True
    mel = np.random.default_rng(9).standard_normal((1, 64, 64)).astype(np.float32) * 2
    y = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(mel)).numpy()
    assert np.array_equal(y, run_reference(q.mod, mel))


def test_host_takes_avx2_kernels_on_a_cpu_without_vnni(monkeypatch):
    """``host`` picks the kernels by the CPU's flags: AVX-512 VNNI -> VNNI kernels, AVX2 only -> AVX2
    kernels, neither -> TVM's default lowering (flags faked; nothing is run)."""
    import zsq_tvm.backends.x86.target as x86_target
    from zsq_tvm.targets import get_target

    q = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=64))
    host = get_target("host")

    def kinds(flags):
        monkeypatch.setattr(x86_target, "host_features", lambda: frozenset(flags))
        mod = host.prepare(q.mod)
        return {str(f.attrs["zsq.kernel"]) for _, f in mod.functions.items()
                if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "zsq.kernel" in f.attrs}

    assert kinds({"avx2", "avx512bw", "avx512_vnni"}) == {"x86_avx512vnni_pointwise", "x86_avx512vnni_depthwise"}
    assert kinds({"avx2", "fma"}) == {"x86_avx2_pointwise", "x86_avx2_depthwise"}
    assert kinds({"sse4_2"}) == set()

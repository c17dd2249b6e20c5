"""``host`` / ``host-vnni`` targets: pointwise conv1d + requantize chains -> hand-written VNNI kernels.

quartznet-tiny (T=128) compiled for ``host-vnni`` must equal the numpy integer reference bit for bit,
pass the integer-only check (on the rewritten, lowered module) and actually replace some convs; the
``host-generic`` build is untouched by the rewrite (its module has no VNNI kernel), and ``host`` takes the
kernels exactly when the CPU has AVX-512 VNNI.
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import zsq_tvm  # noqa: E402
from zsq_tvm.backends.x86.offload_pointwise import offload_pointwise  # noqa: E402
from zsq_tvm.build import compile_relax  # noqa: E402
from relax_passes.reference import run_reference  # noqa: E402
from zsq_tvm.backends.x86.cpu import has_vnni  # noqa: E402

pytestmark = pytest.mark.skipif(not has_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")


@pytest.fixture(scope="module")
def qtiny():
    return zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=128))


def _vnni_funcs(mod):
    return [gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "zsq.kernel" in f.attrs]


def test_rewrite_replaces_pointwise_convs(qtiny):
    mod, replaced = offload_pointwise(qtiny.mod)
    assert len(replaced) > 0
    assert all(r["K"] > 0 and r["M"] > 0 and r["T"] == 64 for r in replaced)
    # every block's residual join (add of two int32 pointwise outputs, ReLU clip, cast) went into a kernel
    assert any(r["residual"] for r in replaced)
    from relax_passes._util import bindings, call_op_name, shape_of

    # (the time mask's own arithmetic on the [1, 1, 1] valid length is no activation: left out)
    acts = [b for b in bindings(mod["main"]) if (shape_of(b.var) or [1])[-1] != 1]
    assert not any(call_op_name(b.value) == "add" and str(b.var.ty.dtype) == "int32" for b in acts)
    # no reshapes around the kernels: they take the graph's [1, C, T] tensors
    assert not any(call_op_name(b.value) == "reshape" for b in acts)
    assert _vnni_funcs(mod)
    # default lowering untouched
    assert not _vnni_funcs(qtiny.mod)


def test_host_takes_vnni_kernels_host_generic_does_not(qtiny):
    from zsq_tvm.backends.x86.cpu import host_features

    _, low_host, rep_host, _ = compile_relax(qtiny.mod, "host")
    _, low_gen, rep_gen, _ = compile_relax(qtiny.mod, "host-generic")
    assert rep_host["ok"] is True and rep_gen["ok"] is True
    # the default build is the fast one where the CPU allows it, and only there
    assert bool(_vnni_funcs(low_host)) == ("avx512_vnni" in host_features())
    assert not _vnni_funcs(low_gen)


def test_host_vnni_bit_exact_and_integer_only(qtiny):
    ex, lowered, report, _ = compile_relax(qtiny.mod, "host-vnni")
    assert report["ok"] is True, report
    assert _vnni_funcs(lowered)
    b = zsq_tvm.compile(qtiny, target="host-vnni")
    assert b.integer_only["ok"] is True
    assert zsq_tvm.check(b)["ok"] is True  # re-lowers with the same rewrite
    rng = np.random.default_rng(0)
    for _ in range(2):
        mel = rng.standard_normal((1, 64, 128)).astype(np.float32) * 2
        y = b.run(mel)
        ref = run_reference(qtiny.mod, mel)
        assert y.dtype == ref.dtype and np.array_equal(y, ref)


def test_quartznet5x5_every_conv_on_vnni_bit_exact():
    """The shipped QuartzNet-5x5 with int16 logits (``out_bits=16``): no conv1d is left to TVM's
    default lowering, and host-vnni equals the numpy reference bit for bit."""
    from relax_passes._util import bindings, call_op_name
    from zsq_tvm.backends.x86.offload_depthwise import X86VnniDepthwise

    q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(frames=64, out_bits=16))
    pmod, replaced = offload_pointwise(q.mod)
    mod = X86VnniDepthwise()(pmod)
    assert any(r["out_dtype"] == "int16" for r in replaced)
    assert not any(call_op_name(b.value) == "nn.conv1d" for b in bindings(mod["main"]))
    b = zsq_tvm.compile(q, target="host-vnni")
    assert b.integer_only["ok"] is True
    mel = np.random.default_rng(5).standard_normal((1, 64, 64)).astype(np.float32) * 2
    assert np.array_equal(b.run(mel), run_reference(q.mod, mel))

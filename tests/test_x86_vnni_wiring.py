"""Opt-in ``host-vnni`` target: pointwise conv1d + requantize chains -> hand-written VNNI kernels.

quartznet-tiny (T=128) compiled for ``host-vnni`` must equal the numpy integer reference bit for bit,
pass the integer-only check (on the rewritten, lowered module) and actually replace some convs; the
default ``host`` build is untouched by the rewrite (its module has no VNNI kernel).
"""

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

import zsq_tvm  # noqa: E402
from relax_passes.x86_vnni_pointwise import X86VnniPointwise  # noqa: E402
from zsq_tvm.build import compile_relax  # noqa: E402
from zsq_tvm.reference import run_reference  # noqa: E402
from zsq_tvm.x86.vnni import has_avx512_vnni  # noqa: E402

pytestmark = pytest.mark.skipif(not has_avx512_vnni(), reason="CPU lacks avx512_vnni (/proc/cpuinfo flags)")


@pytest.fixture(scope="module")
def qtiny():
    return zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=128))


def _vnni_funcs(mod):
    return [gv.name_hint for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "zsq.kernel" in f.attrs]


def test_rewrite_replaces_pointwise_convs(qtiny):
    p = X86VnniPointwise()
    mod = p(qtiny.mod)
    assert len(p.replaced) > 0
    assert all(r["K"] > 0 and r["M"] > 0 and r["T"] == 64 for r in p.replaced)
    assert _vnni_funcs(mod)
    # default lowering untouched
    assert not _vnni_funcs(qtiny.mod)


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

"""One build for every length: ``zsq quantize MODEL`` without ``--frames`` (relax_passes.symbolic_time) and the x86
kernels that take any length.  Every result is compared bit for bit with the numpy integer reference run on exactly
that many frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import tirx

from zsq_tvm.cli import main

LENGTHS = (1, 7, 100, 137, 1000)  # tiny, 1 s, 1.37 s, 10 s (60 s: bench/symbolic_time.py; its reference takes 40 s)


@pytest.fixture(scope="module")
def qdir(tmp_path_factory):
    import zsq_tvm

    q = zsq_tvm.quantize("quartznet5x5", zsq_tvm.QuantConfig(progress=False))
    return q.save(tmp_path_factory.mktemp("symbolic") / "q")


@pytest.fixture(scope="module")
def quantized(qdir):
    import zsq_tvm

    return zsq_tvm.load(qdir)


def test_quantize_without_frames_gives_a_symbolic_length(quantized, qdir):
    m = json.loads((qdir / "manifest.json").read_text())
    assert m["frames"] is None and m["time_stride"] == 2 and m["time_mask"] is False
    assert m["io"]["inputs"][0]["shape"] == [1, 64, "T"]
    assert m["io"]["output"]["shape"] == [1, "(T - 1) // 2 + 1", 29]
    assert quantized.frames is None


@pytest.fixture(scope="module")
def host_build(quantized):
    import zsq_tvm

    return zsq_tvm.compile(quantized, target="host")


@pytest.mark.parametrize("target", ["host", "x86-avx2"])
def test_dynamic_build_is_bit_exact_at_every_length(quantized, host_build, target, tmp_path):
    import zsq_tvm
    from relax_passes.reference import run_reference

    b = host_build if target == "host" else zsq_tvm.compile(quantized, target=target)
    rng = np.random.default_rng(0)
    lengths = LENGTHS if target == "host" else (5, 137, 1000)
    for L in lengths:
        x = rng.standard_normal((1, 64, L)).astype(np.float32)
        y = b.run(x)
        assert y.shape == (1, -(-L // 2), 29)
        assert np.array_equal(y, np.asarray(run_reference(quantized.mod, x))), (target, L)
    if target == "host":  # saved and loaded again, run through the CLI at another length
        d = b.save(tmp_path / "b")
        mel = rng.standard_normal((64, 333)).astype(np.float32)
        np.save(tmp_path / "mel.npy", mel)
        assert main(["run", str(d), "--input", str(tmp_path / "mel.npy"), "--output", str(tmp_path / "y.npy")]) == 0
        assert np.array_equal(np.load(tmp_path / "y.npy"), np.asarray(run_reference(quantized.mod, mel[None])))


def test_memory_stays_bounded_over_many_lengths(host_build):
    """Every new length allocates new intermediates; the allocator's free blocks are released every few lengths
    (Build._bound_pool), so memory does not grow with the number of lengths seen (it did: +110 MiB over 64)."""
    import psutil

    rng = np.random.default_rng(3)
    proc = psutil.Process()
    run = lambda L: host_build.run(rng.standard_normal((1, 64, L)).astype(np.float32))  # noqa: E731
    for L in rng.integers(100, 1500, 16):  # the pool's working set
        run(int(L))
    before = proc.memory_info().rss
    for L in rng.integers(100, 1500, 64):
        run(int(L))
    assert proc.memory_info().rss - before < 40 * 2**20


def test_the_hand_written_kernels_serve_the_dynamic_build(quantized):
    from zsq_tvm.backends.x86.target import vnni_prepare

    names = [str(gv.name_hint) for gv in vnni_prepare(quantized.mod).functions]
    dw = [n for n in names if "_dw_" in n and "_tdyn_" in n]
    pw = [n for n in names if "_pw_" in n and "_tdyn_" in n]
    assert len(dw) >= 5 and len(pw) >= 5, names  # every conv of QuartzNet-5x5, none on the default lowering


KERNELS = [
    ("pw", dict(K=64, M=256, a_dtype="int8")),
    ("pw", dict(K=256, M=256, residual=True, req_qmin=-127, req_qmax=127, qmin=0, qmax=255, out_dtype="uint8")),
    ("pw", dict(K=37, M=29, out_dtype="int16", qmin=-32767, qmax=32767)),
    ("pw", dict(K=64, M=64, taps=11, pad_l=5, pad_r=5, a_dtype="int8")),
    ("pw", dict(K=64, M=64, taps=11, pad_l=5, pad_r=5, stride=2)),
    ("pw", dict(K=64, M=48, isa="avx2")),
    ("dw", dict(C=64, K=33, stride=2, pad_l=16, pad_r=16, a_dtype="int8")),
    ("dw", dict(C=32, K=87, dilation=2, pad_l=86, pad_r=86)),
    ("dw", dict(C=16, K=5, pad_l=2, pad_r=2, isa="avx2")),
]


@pytest.mark.parametrize("kind,kw", KERNELS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(KERNELS)])
def test_symbolic_kernels_match_the_reference_at_every_length(kind, kw):
    """One compiled kernel per geometry, run at lengths around every tile boundary."""
    from zsq_tvm.backends.x86 import depthwise as D
    from zsq_tvm.backends.x86 import pointwise as P

    rng = np.random.default_rng(len(str(kw)))
    mod = P if kind == "pw" else D
    field = "T" if kind == "pw" else "Tin"
    extra = dict(layout="ncw") if kind == "pw" else {}
    spec = (P.PointwiseSpec if kind == "pw" else D.DepthwiseSpec)(**{field: tirx.Var("T", "int64")}, **extra, **kw)
    f = mod.build(spec)["main"]
    out_ch = spec.M if kind == "pw" else spec.C
    W = (rng.integers(-127, 128, (spec.M, spec.K, spec.taps)) if kind == "pw"
         else rng.integers(-127, 128, (spec.C, 1, spec.K))).astype(np.int8)
    bias = rng.integers(-1000, 1000, out_ch)
    Mul, Sh = rng.integers(1, 2**14, out_ch).astype(np.int64), np.full(out_ch, 20, np.int64)
    consts = [tvm.runtime.tensor(mod.pack_weights(W, spec)), tvm.runtime.tensor(mod.fold_bias(W, bias, spec)),
              tvm.runtime.tensor(Mul), tvm.runtime.tensor(Sh)]
    in_ch = spec.K if kind == "pw" else spec.C
    a_dtype = kw.get("a_dtype", "uint8")
    for n in list(range(1, 20)) + [31, 32, 33, 63, 64, 65, 127, 129, 500]:
        fixed = (P.PointwiseSpec if kind == "pw" else D.DepthwiseSpec)(**{field: n}, **extra, **kw)
        if fixed.Tout < 1:
            continue
        X = rng.integers(0 if a_dtype == "uint8" else -127, 256 if a_dtype == "uint8" else 128,
                         (in_ch, n)).astype(a_dtype)
        R = rng.integers(-100, 100, (out_ch, fixed.Tout)).astype(np.int32)
        ref = (P.reference(fixed, X, W, bias, Mul, Sh, R if kw.get("residual") else None) if kind == "pw"
               else D.reference(fixed, X, W, bias, Mul, Sh))
        out = tvm.runtime.empty((1, out_ch, fixed.Tout), kw.get("out_dtype", "int8"))
        args = [tvm.runtime.tensor(X[None]), *consts] + ([tvm.runtime.tensor(R[None])] if kw.get("residual") else [])
        f(*args, out)
        assert np.array_equal(out.numpy()[0], ref), (kind, kw, n)


def test_graphs_that_fix_their_length_are_refused_with_the_ops_named():
    from tvm import relax

    from relax_passes.symbolic_time import SymbolicTimeError, symbolic_time

    bb = relax.BlockBuilder()
    x = relax.Var("mel", relax.TensorType((1, 4, 10), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.reshape(x, [1, 40]))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    with pytest.raises(SymbolicTimeError, match=r"reshape \(.*\).*--frames T"):
        symbolic_time(bb.get())

    bb = relax.BlockBuilder()
    x = relax.Var("mel", relax.TensorType((1, 4, 10), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():  # a constant sized for this length (a position table, a time mask's iota)
            y = bb.emit(relax.op.add(x, relax.const(np.arange(10, dtype=np.int32).reshape(1, 1, 10))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    with pytest.raises(SymbolicTimeError, match="spans the time axis"):
        symbolic_time(bb.get())


def test_fixed_length_targets_and_tuning_refuse_before_any_work(qdir, tmp_path, capsys):
    assert main(["compile", str(qdir), "--target", "cortex-m4", "-o", str(tmp_path / "fw")]) == 2
    err = capsys.readouterr().err
    assert "symbolic T" in err and "--frames T" in err and not (tmp_path / "fw").exists()
    assert main(["tune", str(qdir), "--trials", "2", "--db", str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert "MetaSchedule tunes kernels of fixed shapes" in err and not (tmp_path / "db").exists()


def test_a_manifest_cannot_smuggle_an_expression_or_disagree_about_t(qdir, tmp_path):
    import shutil

    from zsq_tvm.artifacts import read_manifest
    from zsq_tvm.core.errors import ArtifactError

    for change, msg in [(lambda m: m["io"]["inputs"][0]["shape"].__setitem__(2, "__import__('os')"), "'io'"),
                        (lambda m: m.__setitem__("frames", 1000), "disagree"),
                        (lambda m: m.__setitem__("time_stride", 0), "time_stride")]:
        d = tmp_path / f"q{len(msg)}"
        shutil.copytree(qdir, d)
        m = json.loads((d / "manifest.json").read_text())
        change(m)
        (d / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ArtifactError, match=msg):  # the fields are checked before any file is read
            read_manifest(d, verify=False)

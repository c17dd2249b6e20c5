"""Integer-only Conformer (issue 5): emitters, frontend folding, Quantize on a tiny Conformer.

* Relax emitters of softmax / GELU / LayerNorm: TVM build == numpy reference interpreter ==
  the ``zsq_tvm.core.intnonlinear`` kernels, bit for bit, over the full int8 range (and int16 scores);
* the ONNX frontend folds the static part of an exported Conformer (shape plumbing, the relative
  positional-encoding table) and turns its zero ``Pad`` into ``Concat``; the folded graph computes
  the same as the original in onnxruntime;
* end to end on a 1-layer Conformer (conv2d subsampling, rel-pos MHSA, GLU, depthwise conv + BN,
  Swish, LayerNorm): integer-only check passes, TVM == numpy reference bit for bit, and the
  dequantized logits stay close to float;
* kernel sharing: a 2-layer Conformer compiles to no more kernels than a 1-layer one (per-layer
  scalars passed as data), still integer-only and bit-exact;
* exact-erf GELU (tiny Transformer) through Quantize and a host build, bit-exact vs the reference;
* calibration's scheduled float build gives the very ranges of TVM's default (unscheduled) build.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zsq_tvm.core import intnonlinear as inl

Q8 = np.arange(-127, 128, dtype=np.int64)


def _tiny_conformer(seed=0):
    from zsq_tvm.zoo.nets.conformer import ConformerCTCModel

    torch.manual_seed(seed)
    m = ConformerCTCModel("tiny", params=dict(d_model=16, n_layers=1, n_heads=2, ff_expansion=2, conv_kernel=5,
                                              subsampling_channels=4)).eval()
    g = torch.Generator().manual_seed(seed)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):  # non-trivial BN so folding is exercised
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
    m.name = "tiny-conformer"
    return m


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from zsq_tvm.zoo.nets.export import export_onnx

    m = _tiny_conformer()
    return m, export_onnx(m, tmp_path_factory.mktemp("conf") / "tiny.onnx", frames=32)


# ---------------------------------------------------------------- emitters: TVM == reference == kernels
def test_relax_softmax_gelu_layernorm_bit_exact():
    from tvm import relax

    from relax_passes import integer_nonlinear as rin
    from relax_passes import lowering, reference

    rng = np.random.default_rng(0)
    S_sm, S_g, S_ln = 12.0 / 32767, 6.0 / 127, 3.0 / 127
    sm_in = np.concatenate([np.tile(Q8 * 129, (2, 1)),                       # all int8 steps, x129: int16
                            rng.integers(-32767, 32768, (6, 255))]).astype(np.int16)
    g_in = Q8.astype(np.int8)
    ln_in = np.concatenate([rng.integers(-127, 128, (5, 144)), np.full((1, 144), 7),
                            np.tile(np.arange(-72, 72), (1, 1)) * (127 // 72)]).astype(np.int8)
    gamma = rng.uniform(-2, 2, 144)
    beta = rng.uniform(-1, 1, 144)
    want = [inl.i_softmax(sm_in, S_sm), inl.i_gelu(g_in, S_g, out_scale=4.0 / 127),
            inl.i_layernorm(ln_in, S_ln, gamma, beta, out_scale=6.0 / 127)]

    bb = relax.BlockBuilder()
    xs = [relax.Var("s", relax.TensorType(sm_in.shape, "int16")), relax.Var("g", relax.TensorType(g_in.shape, "int8")),
          relax.Var("l", relax.TensorType(ln_in.shape, "int8"))]
    with bb.function("main", xs):
        with bb.dataflow():
            ys = [rin.emit_i_softmax(bb, xs[0], S_sm), rin.emit_i_gelu(bb, xs[1], S_g, out_scale=4.0 / 127),
                  rin.emit_i_layernorm(bb, xs[2], S_ln, gamma, beta, out_scale=6.0 / 127)]
            gv = bb.emit_output(relax.Tuple([y for y, _ in ys]))
        bb.emit_func_output(gv)
    mod = bb.get()
    for (_, s_out), (_, s_want) in zip(ys, want):
        assert s_out == s_want
    ref = reference.run_reference(mod, sm_in, g_in, ln_in)
    got = lowering.run_module(lowering.compile_module(mod), sm_in, g_in, ln_in)
    for r, g, (w, _) in zip(ref, got, want):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(r, w)
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------- frontend
def test_frontend_folds_static_graph_and_pads(tiny_onnx):
    import onnx
    import onnxruntime as ort

    from zsq_tvm.frontend.onnx_import import fold_static, pads_to_concat

    _, path = tiny_onnx
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"Sin", "Cos", "Expand", "ScatterND", "Pad"} <= ops  # what the exporter emits
    folded = pads_to_concat(fold_static(proto, {"mel": [1, 64, 32]}))
    left = {n.op_type for n in folded.graph.node}
    assert not left & {"Sin", "Cos", "Expand", "ScatterND", "Pad", "Shape", "ConstantOfShape"}
    assert "BatchNormalization" in left  # kept for FoldBatchNorm / synthesis
    x = np.random.default_rng(0).standard_normal((1, 64, 32)).astype(np.float32)
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"mel": x})[0]
    np.testing.assert_allclose(run(folded), run(proto), rtol=1e-5, atol=1e-5)


def test_frontend_dynamic_time_axis(tmp_path):
    """A dynamic-T export (NeMo's default) imports at any fixed T: the folded graph is T-specific."""
    import onnx
    import onnxruntime as ort

    from zsq_tvm.frontend.onnx_import import fold_static, import_onnx, pads_to_concat
    from zsq_tvm.zoo.nets.export import export_onnx

    path = export_onnx(_tiny_conformer(), tmp_path / "dyn.onnx", frames=None)
    proto = onnx.load(str(path))
    folded = pads_to_concat(fold_static(proto, {"mel": [1, 64, 48]}))
    x = np.random.default_rng(2).standard_normal((1, 64, 48)).astype(np.float32)
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"mel": x})[0]
    np.testing.assert_allclose(run(folded), run(proto), rtol=1e-5, atol=1e-5)
    mod, info, _ = import_onnx(str(path), frames=48)
    assert info.file_frames is None and [int(d) for d in mod["main"].params[0].ty.shape] == [1, 64, 48]


# ---------------------------------------------------------------- end to end
def test_tiny_conformer_integer_only_bit_exact(tiny_onnx):
    import zsq_tvm
    from relax_passes._util import bindings, call_op_name
    from relax_passes.reference import run_reference

    model, path = tiny_onnx
    q = zsq_tvm.quantize(str(path), zsq_tvm.QuantConfig(frames=32, num_batches=2))
    ops = {call_op_name(b.value) for b in bindings(q.mod["main"])}
    assert not ops & {"nn.softmax", "sigmoid", "nn.layer_norm", "divide"}          # all replaced
    assert {"nn.conv2d", "matmul", "floor_divide", "left_shift", "concat", "split"} <= ops
    kinds = {r["op"] for r in q.metadata["overflow"]["checks"]}
    assert {"conv2d", "matmul_act", "matmul", "bias_add", "residual_sum"} <= kinds   # proved accumulators
    layer_ops = [r["op"] for r in q.metadata["layers"]]
    assert layer_ops.count("softmax") == 1 and layer_ops.count("layer_norm") == 5
    assert layer_ops.count("glu") == 1 and layer_ops.count("swish") == 3
    b = zsq_tvm.compile(q, target="host")  # lowers once: the integer-only check sees what is compiled
    assert b.integer_only["ok"], b.integer_only
    x = np.random.default_rng(1).uniform(-3, 3, (1, 64, 32)).astype(np.float32)
    ref = run_reference(q.mod, x)
    out = b.run(x)
    np.testing.assert_array_equal(out, ref)
    with torch.no_grad():
        f = model(torch.tensor(x)).numpy()
    # 8-bit everywhere on a random-weight model: measured max error 6 % of the logit range
    assert np.abs(out - f).max() <= 0.15 * np.abs(f).max()


def test_identical_layers_share_kernels_bit_exact(tmp_path):
    """ShareScalarConstants (in ``zsq_tvm.build.lower`` for CPU targets): a 2-layer Conformer's layers differ
    only in their scales, so once the per-layer integer scalars are kernel arguments the second layer adds
    no kernel of its own — and the build stays integer-only and bit-exact with the reference (which runs
    the module *before* the pass)."""
    import tvm

    import zsq_tvm
    from relax_passes._util import is_tensor_const
    from relax_passes.share_scalar_constants import BINARY_OPS, share_scalar_constants
    from relax_passes import lowering
    from zsq_tvm.build import lower
    from zsq_tvm.zoo.nets.conformer import ConformerCTCModel
    from zsq_tvm.zoo.nets.export import export_onnx
    from relax_passes.reference import run_reference

    def n_kernels(mod):
        return sum(isinstance(f, tvm.tirx.PrimFunc) for f in mod.functions.values())

    tgt = lowering.host_target()
    counts, qs = {}, {}
    for n_layers in (1, 2):
        torch.manual_seed(0)
        m = ConformerCTCModel("tiny", params=dict(d_model=16, n_layers=n_layers, n_heads=2, ff_expansion=2,
                                                  conv_kernel=5, subsampling_channels=4)).eval()
        path = export_onnx(m, tmp_path / f"l{n_layers}.onnx", frames=32)
        # unmasked: with the (default) time mask the second layer brings one kernel of its own (50 vs 49)
        q = qs[n_layers] = zsq_tvm.quantize(str(path), zsq_tvm.QuantConfig(frames=32, num_batches=2,
                                                                            time_mask=False))
        with tgt:
            unshared = n_kernels(lowering.lower(q.mod))
        counts[n_layers] = (unshared, n_kernels(lower(q.mod, tgt)[0]))
    (u1, s1), (u2, s2) = counts[1], counts[2]
    assert u2 > u1 + 10, counts          # without the pass, the second layer brings its own kernels
    assert s2 == s1, counts              # with it, none

    q = qs[2]
    shared, rewritten = share_scalar_constants(q.mod)
    assert rewritten > 100
    for gv, f in shared.functions.items():  # postcondition: no integer 0-d constant left next to a tensor
        if isinstance(f, tvm.relax.Function):
            for blk in f.body.blocks:
                for bnd in blk.bindings:
                    v = bnd.value
                    if isinstance(v, tvm.relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in BINARY_OPS \
                            and len(v.ty.shape) >= 1:
                        assert not any(is_tensor_const(a) and a.value.ndim == 0 and str(a.value.dtype)[0] in "iu"
                                       for a in v.args), bnd.var.name
    b = zsq_tvm.compile(q, target="host-generic")  # the counts above are of the default lowering
    assert b.integer_only["ok"] and b.integer_only["prim_funcs"] == s2, b.integer_only
    rng = np.random.default_rng(3)
    for x in (rng.uniform(-3, 3, (1, 64, 32)), 5 * rng.standard_normal((1, 64, 32))):
        x = x.astype(np.float32)
        np.testing.assert_array_equal(b.run(x), run_reference(q.mod, x))


def test_calibration_scheduled_build_keeps_ranges_exactly(tiny_onnx, monkeypatch):
    """Calibration schedules the float matmuls/convs (rows streamed, all cores) but keeps each output's
    summation order: the observed ranges equal those of TVM's default, unscheduled build exactly."""
    import tvm

    from relax_passes.fold_batchnorm import FoldBatchNorm
    from zsq_tvm import calibrate as C
    from relax_passes import lowering
    from zsq_tvm.frontend.onnx_import import import_onnx

    _, path = tiny_onnx
    fmod, _, proto = import_onnx(str(path), frames=32)
    folded = FoldBatchNorm(onnx_model=proto)(fmod)
    imod, _ = C.instrument(folded)
    with tvm.target.Target("llvm"):
        _, n_scheduled = C.schedule_float_reductions(lowering.lower(imod))
    assert n_scheduled >= 8  # conv2d x2, the linears, Q K^T, attention V, conv1d ...: not a no-op
    rng = np.random.default_rng(5)
    batches = [rng.uniform(-3, 3, (1, 64, 32)).astype(np.float32) for _ in range(2)]
    new = C.calibrate(folded, batches, progress=False)
    monkeypatch.setattr(C, "_build_float", lambda m, target: tvm.compile(m, target=target))
    old = C.calibrate(folded, batches, progress=False)
    assert new.keys() == old.keys() and len(new) > 50
    assert new == old


def test_architecture_name_quantizes_with_seeded_random_weights():
    """``zsq quantize conformer-ctc-large ...``: an architecture without a shipped checkpoint resolves to an
    export with random weights of that seed (same seed, same weights; another seed, others), and the
    manifest names it; an unknown name is still one clear error."""
    import onnx

    from zsq_tvm.pipeline import _resolve_model
    from zsq_tvm.core.errors import ModelLoadError

    def weights(proto):
        return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if len(t.dims) >= 2
                and np.prod(t.dims) > 1000}  # conv / linear weights (BN vectors are 1-D)

    a, label = _resolve_model("quartznet10x5", frames=64, seed=0)  # the smallest unshipped architecture
    assert label == "arch:quartznet10x5 (random weights, seed 0)"
    b, _ = _resolve_model("quartznet10x5", frames=64, seed=0)
    c, _ = _resolve_model("quartznet10x5", frames=64, seed=1)
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert len(wa) > 10 and wa.keys() == wb.keys() == wc.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert not any(np.array_equal(wa[k], wc[k]) for k in wa)
    with pytest.raises(ModelLoadError, match="unknown model"):
        _resolve_model("conformer-ctc-huge")


class _TinyTransformer(torch.nn.Module):
    """Linear -> GELU -> LayerNorm -> single-head self-attention (scores / 4, softmax) -> Linear:
    the Transformer ops the Conformer does not have (GELU, a softmax fed by one matmul)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(64, 16), torch.nn.Linear(16, 29)
        self.norm = torch.nn.LayerNorm(16)
        self.qkv = torch.nn.Linear(16, 48)

    def forward(self, mel):
        x = self.norm(torch.nn.functional.gelu(self.inp(mel.transpose(1, 2))))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)
        return self.out(x + att @ v)


@pytest.fixture(scope="module")
def tiny_transformer_q(tmp_path_factory):
    import warnings

    import zsq_tvm

    torch.manual_seed(0)
    m = _TinyTransformer().eval()
    path = tmp_path_factory.mktemp("tt") / "t.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(1, 64, 24),), str(path), input_names=["mel"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 64, 24)).astype(np.float32) for _ in range(4)]
    return m, calib, zsq_tvm.quantize(str(path), zsq_tvm.QuantConfig(frames=24, calib=calib))


def test_tiny_transformer_gelu_softmax_reference(tiny_transformer_q):
    from relax_passes._util import bindings, call_op_name
    from relax_passes.reference import run_reference

    m, calib, q = tiny_transformer_q
    ops = {call_op_name(b.value) for b in bindings(q.mod["main"])}
    assert not ops & {"nn.gelu", "nn.softmax", "nn.layer_norm", "divide"}
    softmax_in = [r for r in q.metadata["layers"] if r["op"] == "softmax"]
    assert len(softmax_in) == 1 and softmax_in[0]["in_bits"] == 16  # matmul -> /4 -> int16 scores
    x = calib[0]
    out = run_reference(q.mod, x)
    with torch.no_grad():
        f = m(torch.tensor(x)).numpy()
    assert np.abs(out - f).max() <= 0.1 * np.abs(f).max()


def test_tiny_transformer_exact_gelu_tvm_build_bit_exact(tiny_transformer_q):
    """Exact-erf GELU (torch's ``Div/Erf/Add/Mul/Mul``, fused to ``Gelu`` by the frontend) through the whole
    Quantize pass *and* a host build: integer-only, TVM == numpy reference bit for bit on inputs it was
    not calibrated on, including ones far outside the calibration range (saturating GELU inputs)."""
    import zsq_tvm
    from relax_passes.reference import run_reference

    _, _, q = tiny_transformer_q
    assert [r["op"] for r in q.metadata["layers"]].count("gelu") == 1  # the erf pattern became one integer GELU
    b = zsq_tvm.compile(q, target="host")
    assert b.integer_only["ok"], b.integer_only
    rng = np.random.default_rng(7)
    for x in (rng.standard_normal((1, 64, 24)), 6.0 * rng.standard_normal((1, 64, 24)), np.zeros((1, 64, 24))):
        x = x.astype(np.float32)
        np.testing.assert_array_equal(b.run(x), run_reference(q.mod, x))

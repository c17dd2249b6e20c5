"""``--time-mask``: the integer model takes each mel's valid length and masks the padding before every
time-mixing conv (``relax_passes/time_mask.py``), so the valid output frames no longer depend on the padding.

Checked: the host build equals the numpy integer reference bit for bit at every length; at the full length it
equals the unmasked model; the valid output frames are unchanged by whatever fills the padding (and without
the mask they are not -- the property the mask exists for); every conv stays on the x86 / CUDA kernels; the
length reaches the model from ``zsq eval`` (per chunk) and ``zsq run`` (a short mel is padded); bad lengths,
the Conformer is masked in its subsampling, attention and conv module; the Cortex-M firmware takes the length
too (QEMU == host C == reference); a model with nothing to mask and a second application get one clear error.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

import zsq_tvm  # noqa: E402
from zsq_tvm.core.errors import InputShapeError  # noqa: E402
from relax_passes.reference import run_reference  # noqa: E402

T = 64


def _ref(mod, *args):
    y = run_reference(mod, *args)
    return y[0] if isinstance(y, tuple) else y


@pytest.fixture(scope="module")
def tiny():
    masked = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=T, num_batches=1, time_mask=True))
    plain = zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=T, num_batches=1, time_mask=False))
    return masked, plain, zsq_tvm.compile(masked, target="host")


def test_the_model_gets_a_length_input_and_every_time_mixing_conv_is_masked(tiny):
    q, plain, b = tiny
    ins = q.manifest["io"]["inputs"]
    assert [i["name"] for i in ins] == ["mel", "length"] and ins[1]["shape"] == [1] and ins[1]["dtype"] == "int32"
    assert b.time_mask and not zsq_tvm.compile(plain, target="host").time_mask
    n_convs = sum(1 for line in plain.mod["main"].script().splitlines()
                  if "R.nn.conv1d" in line and "padding=[0, 0]" not in line)  # kernel > 1 (these are 'same'-padded)
    # the input is masked once; the first conv reads it directly, every other one gets its own mask
    assert q.metadata["time_mask"]["masked"] == {"input": 1, "conv1d": n_convs - 1} and n_convs >= 10
    assert b.integer_only["ok"] is True


@pytest.mark.parametrize("length", [T, 40, 17, 1, 0])
def test_masked_build_equals_the_integer_reference(tiny, length):
    q, _, b = tiny
    x = np.random.default_rng(length).normal(0, 1, (1, 64, T)).astype(np.float32)
    np.testing.assert_array_equal(b.run(x, length=length), _ref(q.mod, x, np.array([length], np.int32)))


def test_full_length_is_the_unmasked_model_bit_for_bit(tiny):
    q, plain, b = tiny
    x = np.random.default_rng(7).normal(0, 1, (1, 64, T)).astype(np.float32)
    np.testing.assert_array_equal(b.run(x), _ref(plain.mod, x))  # length defaults to all T frames


def test_valid_frames_do_not_depend_on_the_padding(tiny):
    q, plain, b = tiny
    rng = np.random.default_rng(3)
    L = 40
    keep = -(-L * 32 // T)  # output frames (stride 2) that belong to the first L input frames
    x = rng.normal(0, 1, (1, 64, T)).astype(np.float32)
    x[..., L:] = 0.0  # zero padding, as zsq eval pads
    noisy = x.copy()
    noisy[..., L:] = rng.normal(0, 3, (1, 64, T - L))
    a, c = b.run(x, length=L), b.run(noisy, length=L)
    np.testing.assert_array_equal(a[:, :keep], c[:, :keep])
    u, v = _ref(plain.mod, x), _ref(plain.mod, noisy)
    assert not np.array_equal(u[:, :keep], v[:, :keep])  # without the mask the padding leaks into them


def test_every_conv_stays_on_the_kernels(tiny):
    from zsq_tvm.targets import get_target

    q, plain, _ = tiny
    for target in ("host", "x86-avx2", "t4"):
        spec = get_target(target)
        with spec.make():
            main = spec.prepare(q.mod)["main"].script()
        assert "R.nn.conv1d" not in main, target


def test_bad_lengths_are_refused(tiny):
    q, plain, b = tiny
    x = np.zeros((1, 64, T), np.float32)
    for bad, what in ((T + 1, "outside 0..64"), (-1, "outside"), ([3, 4], "one per mel"), (2.5, "integer")):
        with pytest.raises(InputShapeError, match=what):
            b.run(x, length=bad)
    with pytest.raises(InputShapeError, match="--no-time-mask"):
        zsq_tvm.compile(plain, target="host").run(x, length=10)


def test_eval_passes_each_chunk_its_valid_frames():
    from zsq_tvm.evaluate import run_fixed

    seen = []

    def infer(x, valid):
        seen.append(valid)
        return np.zeros((x.shape[-1] // 2, 3), np.float32)

    out, n = run_fixed(infer, np.ones((64, 250), np.float32), 100, with_length=True)
    assert seen == [100, 100, 50] and n == 3 and out.shape[0] == 125


def test_eval_says_when_padding_went_unmasked(tiny, tmp_path):
    """``zsq eval`` of a fixed-T build counts the zero-padded utterances; without ``--time-mask`` its summary
    says what that costs and how to fix it, with the mask it does not."""
    from pathlib import Path

    from zsq_tvm.evaluate import evaluate, format_result

    q, plain, b = tiny
    manifest = Path(__file__).parent / "fixtures" / "tts" / "tts.json"
    lines = {}
    for name, build in (("masked", b), ("plain", zsq_tvm.compile(plain, target="host"))):
        res = evaluate(build.save(tmp_path / name), manifest, progress=False)
        assert res["n_padded"] == res["n_utterances"] > 0 and res["time_mask"] is (name == "masked")
        lines[name] = format_result(res)
    assert "--no-time-mask" in lines["plain"] and f"{res['n_padded']} of {res['n_utterances']}" in lines["plain"]
    assert "\n" not in lines["masked"]


def test_zsq_run_pads_a_short_mel_for_a_masked_build(tiny, tmp_path, capsys):
    from zsq_tvm.cli import main

    q, _, b = tiny
    out = b.save(tmp_path / "b")
    x = np.random.default_rng(5).normal(0, 1, (64, 30)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--decode", "--output", str(tmp_path / "y.npy")]) == 0
    padded = np.concatenate([x, np.zeros((64, T - 30), np.float32)], axis=1)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), b.run(padded, length=30))
    assert b.transcribe(padded, length=30)[0] in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_conformer(tmp_path_factory):
    import onnx

    from tests.test_conformer_int import _tiny_conformer
    from zsq_tvm.zoo.nets.export import export_onnx

    p = export_onnx(_tiny_conformer(), tmp_path_factory.mktemp("tm_conf") / "tiny.onnx", frames=32)
    proto = onnx.load(str(p))
    cfg = dict(frames=32, num_batches=1)
    return (zsq_tvm.quantize(proto, zsq_tvm.QuantConfig(**cfg, time_mask=True)),
            zsq_tvm.quantize(proto, zsq_tvm.QuantConfig(**cfg, time_mask=False)))


def test_conformer_masks_subsampling_attention_and_conv_module(tiny_conformer):
    """The Conformer mixes frames in its two 3x3 subsampling conv2d (time on H), in self-attention and in the conv
    module's depthwise conv1d: all masked, at their own frame counts (32, 16 and 8)."""
    q, plain = tiny_conformer
    Tc = 32
    assert [i["name"] for i in q.manifest["io"]["inputs"]] == ["mel", "length"]
    assert q.metadata["time_mask"]["masked"] == {"input": 1, "conv2d": 1, "softmax": 1, "conv1d": 1}  # one layer
    x = np.random.default_rng(11).normal(0, 1, (1, 64, Tc)).astype(np.float32)
    np.testing.assert_array_equal(_ref(q.mod, x, np.array([Tc], np.int32)), _ref(plain.mod, x))
    L, keep = 20, 5  # valid frames after two stride-2 convs: (20 + 2 - 3) // 2 + 1 = 10, then 5
    x[..., L:] = 0.0
    noisy = x.copy()
    noisy[..., L:] = np.random.default_rng(12).normal(0, 3, (1, 64, Tc - L))
    a, c = _ref(q.mod, x, np.array([L], np.int32)), _ref(q.mod, noisy, np.array([L], np.int32))
    np.testing.assert_array_equal(a[:, :keep], c[:, :keep])
    assert not np.array_equal(_ref(plain.mod, x)[:, :keep], _ref(plain.mod, noisy)[:, :keep])
    for n in (0, 1):  # every key masked in attention: no division by zero, any output
        _ref(q.mod, x, np.array([n], np.int32))
    b = zsq_tvm.compile(q, target="host")
    np.testing.assert_array_equal(b.run(noisy, length=L), c)
    assert b.integer_only["ok"] is True


def test_cortex_m_firmware_takes_the_length(tiny):
    """``zsq_run(in, length, out)``: under QEMU, the same integers as the generated C on this machine and as the
    numpy reference, at every length."""
    from zsq_tvm.backends.cortexm import firmware as fw

    why = fw.toolchain_missing() or fw.qemu_missing()
    if why:
        pytest.skip(why)
    q = tiny[0]
    b = zsq_tvm.compile(q, target="cortex-m4")
    assert "const int32_t *length" in (b.fw_dir / "model.h").read_text() and b.time_mask
    assert b.firmware["symbols"]["ok"]
    x = np.random.default_rng(21).normal(0, 1, (1, 64, T)).astype(np.float32)
    xi = b.quantize_input(x)
    for L in (T, 40, 0):
        y, yc = b.run(x, length=L), b.run(x, length=L, codes=True)
        np.testing.assert_array_equal(y, _ref(q.mod, x, np.array([L], np.int32)))
        np.testing.assert_array_equal(b.run_int(xi, host=True, length=np.array([L], np.int32))[0], yc)
    with pytest.raises(InputShapeError, match="outside"):
        b.run(x, length=T + 1)


def test_what_the_mask_cannot_do_says_so(tiny):
    import tvm
    from tvm import relax

    from relax_passes.time_mask import TimeMask, TimeMaskError

    with pytest.raises(Exception, match="already has a 'length' input"):
        TimeMask()(tiny[0].mod)
    bb = relax.BlockBuilder()
    mel = relax.Var("mel", relax.TensorType((1, 64, 16), "int32"))
    with bb.function("main", [mel]):
        with bb.dataflow():
            y = bb.emit_output(bb.emit(relax.op.add(mel, mel)))
        bb.emit_func_output(y)
    with pytest.raises(Exception, match="nothing to mask"):
        TimeMask()(bb.get())
    assert issubclass(TimeMaskError, ValueError)
    del tvm


def test_bench_times_a_masked_build(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    from zsq_tvm.benchmark import compare_onnx
    from zsq_tvm.zoo.nets.export import export_onnx

    onnx_path = export_onnx("quartznet-tiny", tmp_path / "tiny.onnx", frames=T)
    res = compare_onnx(tiny[2], str(onnx_path), runs=2, warmup=1, int8=False)
    assert set(res["median_ms"]) == {"zsq_int8", "ort_fp32"} and res["median_ms"]["zsq_int8"] > 0


class _ReshapeThenConv(__import__("torch").nn.Module):
    """A conv over a reshaped mel ([B, 64, T] -> [B, 32, 2T]): a time axis the mask cannot follow."""

    def __init__(self):
        super().__init__()
        self.conv = __import__("torch").nn.Conv1d(32, 29, 3, padding=1)

    def forward(self, x):
        return self.conv(x.reshape(x.shape[0], 32, -1))


def test_the_mask_is_the_default_and_a_model_it_cannot_follow_is_quantized_unmasked(tmp_path, capsys):
    """Default on (``--time-mask`` still accepted, ``--no-time-mask`` opts out); a graph whose time axis TimeMask
    cannot follow quantizes anyway, unmasked, with one ``zsq: note:`` line and ``time_mask: false`` recorded."""
    import json
    import warnings

    from relax_passes.time_mask import TimeMaskError, time_mask
    from zsq_tvm.cli import main
    from zsq_tvm.zoo.toy import export_torch

    assert zsq_tvm.QuantConfig().time_mask is True
    onnx_path = export_torch(_ReshapeThenConv().eval(), tmp_path / "rc.onnx", frames=16)
    plain = zsq_tvm.quantize(str(onnx_path), zsq_tvm.QuantConfig(frames=16, num_batches=1, time_mask=False))
    with pytest.raises(TimeMaskError, match="cannot find the time axis"):  # the error itself, not TVM's wrapper
        time_mask(plain.mod)
    runs = {"default": [], "alias": ["--time-mask"], "off": ["--no-time-mask"]}
    for name, flags in runs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", zsq_tvm.TimeMaskWarning)  # the CLI turns it into its note, never raises
            rc = main(["quantize", str(onnx_path), "--frames", "16", "--num-batches", "1", "-o", str(tmp_path / name),
                       *flags])
        cap = capsys.readouterr()
        assert rc == 0, cap.err
        notes = [line for line in cap.err.splitlines() if line.startswith("zsq: note:")]
        assert len(notes) == (name != "off") and "time mask" not in cap.out, cap
        assert not notes or "cannot find the time axis" in notes[0]
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        assert m["time_mask"] is False and len(m["io"]["inputs"]) == 1
    with pytest.warns(zsq_tvm.TimeMaskWarning, match="without the time mask"):
        q = zsq_tvm.quantize(str(onnx_path), zsq_tvm.QuantConfig(frames=16, num_batches=1))
    assert q.metadata["time_mask"]["masked"] == {} and "time axis" in q.metadata["time_mask"]["skipped"]
    assert q.manifest["time_mask"] is False and q.mod["main"].script() == plain.mod["main"].script()


def test_default_quantize_of_a_shipped_model_masks(tiny, tmp_path, capsys):
    """``zsq quantize quartznet-tiny`` (no flag) is the ``time_mask=True`` model; ``--no-time-mask`` the plain one."""
    import json

    from zsq_tvm.cli import main

    q, plain, _ = tiny
    for flags, ref in (([], q), (["--no-time-mask"], plain)):
        out = tmp_path / ("off" if flags else "on")
        assert main(["quantize", "quartznet-tiny", "--frames", str(T), "--num-batches", "1", "-o", str(out), *flags]) == 0
        so = capsys.readouterr().out
        assert ("time mask: input length" in so) is (not flags)
        m = json.loads((out / "manifest.json").read_text())
        assert m["time_mask"] is (not flags) and m["io"] == ref.manifest["io"]

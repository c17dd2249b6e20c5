"""Bad inputs at the front of a build (``Build.run`` and ``zsq run --input``): a clear error (exit 2 via
the CLI) or the documented behaviour (float64 converted, large values clamped to +-alpha), never a
crash or silent garbage.  The contract is in :meth:`zsq_tvm.build.Build._prepare`."""

import numpy as np
import pytest

import zsq_tvm
from _zsq_models import micro_onnx
from zsq_tvm.api import QuantConfig
from zsq_tvm.cli import main
from zsq_tvm.core.errors import InputShapeError, ZsqError

FRAMES = 32
F = 64


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    q = zsq_tvm.quantize(micro_onnx(d / "micro.onnx", frames=FRAMES), QuantConfig(frames=FRAMES, num_batches=2))
    b = zsq_tvm.compile(q, target="host")
    b.save(d / "build")
    return d / "build", b, float(q.metadata["input"][0]["alpha"])


def _mel(seed=0, shape=(F, FRAMES)):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _nan(x):
    x = x.copy()
    x[3, 5] = np.nan
    return x


def _inf(x, sign=1):
    x = x.copy()
    x[0, 1] = sign * np.inf
    return x


BAD = {
    "nan": (_nan(_mel()), "NaN"),
    "+inf": (_inf(_mel()), "infinite"),
    "-inf (log of silence)": (_inf(_mel(), -1), "infinite"),
    "nan float64": (_nan(_mel()).astype(np.float64), "NaN"),
    "int16 (raw audio)": ((_mel() * 1000).astype(np.int16), "dtype int16"),
    "int32": (np.zeros((F, FRAMES), np.int32), "dtype int32"),
    "bool": (np.zeros((F, FRAMES), bool), "dtype bool"),
    "complex": (np.zeros((F, FRAMES), np.complex64), "dtype complex64"),
    "wrong features": (_mel(shape=(80, FRAMES)), f"expects [B, {F}, {FRAMES}]"),
    "transposed": (_mel(shape=(FRAMES, F)), f"expects [B, {F}, {FRAMES}]"),
    "1-D": (np.zeros(F * FRAMES, np.float32), "2-D"),
    "4-D": (np.zeros((1, 1, F, FRAMES), np.float32), "2-D"),
    "zero frames": (np.zeros((F, 0), np.float32), "zero frames"),
    "empty batch": (np.zeros((0, F, FRAMES), np.float32), "empty batch"),
    "longer than T": (_mel(shape=(F, FRAMES + 7)), "longer than"),
    "shorter than T": (_mel(shape=(F, FRAMES - 1)), "shorter than"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_api_clear_error(build_dir, case):
    _, b, _ = build_dir
    x, needle = BAD[case]
    with pytest.raises(InputShapeError) as ei:
        b.run(x)
    msg = str(ei.value)
    assert needle in msg and "Fix:" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("case", ["nan", "int16 (raw audio)", "longer than T", "zero frames", "-inf (log of silence)"])
def test_cli_exit_2(build_dir, tmp_path, capsys, case):
    d, _, _ = build_dir
    x, needle = BAD[case]
    np.save(tmp_path / "mel.npy", x)
    rc = main(["run", str(d), "--input", str(tmp_path / "mel.npy"), "--output", str(tmp_path / "o.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.startswith("zsq: error:"), err
    assert not (tmp_path / "o.npy").exists()


def test_cli_unreadable_inputs(build_dir, tmp_path, capsys):
    d, _, _ = build_dir
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name in ("junk.npy", "obj.npy", "missing.npy"):
        rc = main(["run", str(d), "--input", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("zsq: error:"), (name, err)


def test_float64_and_float16_are_converted(build_dir):
    _, b, _ = build_dir
    x = _mel(1)
    ref = b.run(x)
    assert np.array_equal(b.run(x.astype(np.float64)), ref)  # float32 values survive the round trip exactly
    x16 = x.astype(np.float16)
    assert np.array_equal(b.run(x16), b.run(x16.astype(np.float32)))


def test_large_values_clamp_to_alpha(build_dir):
    """Documented: values beyond the calibrated input range saturate to +-alpha (the input quantize clips)."""
    _, b, alpha = build_dir
    x = _mel(2)
    big = x.copy()
    big[:, ::2] = np.sign(big[:, ::2]) * 1e30  # absurdly large, still finite in float32
    clamped = np.clip(big, -alpha, alpha)
    assert np.array_equal(b.run(big), b.run(clamped))
    f64 = big.astype(np.float64)
    f64[:, 1::4] = np.sign(f64[:, 1::4]) * 1e300  # finite in float64, beyond float32: clamped as well
    assert np.array_equal(b.run(f64), b.run(np.clip(f64, -alpha, alpha).astype(np.float32)))
    out = b.run(big)
    assert np.isfinite(out).all()


def test_batch_and_2d_inputs_agree(build_dir):
    _, b, _ = build_dir
    xs = np.stack([_mel(3), _mel(4), _mel(5)])
    batch = b.run(xs)
    assert batch.shape[0] == 3
    for i in range(3):
        assert np.array_equal(b.run(xs[i]), batch[i:i + 1])


def test_errors_are_zsq_errors():
    assert issubclass(InputShapeError, ZsqError) and InputShapeError.exit_code == 2

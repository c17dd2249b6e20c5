"""Cortex-M target: TVM c kernels + static driver, bit-exact under QEMU (skips without the toolchain)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from zsq_tvm.backends.cortexm import firmware as fw

FRAMES = 64
TOOLCHAIN = fw.toolchain_missing()
QEMU = fw.qemu_missing()
needs_arm = pytest.mark.skipif(TOOLCHAIN is not None, reason=f"Cortex-M toolchain: {TOOLCHAIN}")
needs_qemu = pytest.mark.skipif(QEMU is not None, reason=f"QEMU: {QEMU}")


@pytest.fixture(scope="module")
def qmodel():
    import zsq_tvm

    # the plain graph (zsq_run(in, out)); the masked firmware: tests/test_time_mask.py::test_cortex_m_firmware_takes_the_length
    return zsq_tvm.quantize("quartznet-tiny", zsq_tvm.QuantConfig(frames=FRAMES, time_mask=False))


def _reference_int(q, mel):
    """Integer logits of the reference: the input of the output dequantize."""
    from relax_passes._util import bindings
    from relax_passes.reference import run_reference

    _, env = run_reference(q.mod, mel, return_env=True)
    for b in bindings(q.mod["main"]):
        v = b.value
        if hasattr(v, "args") and len(v.args) > 1 and "dequantize" in getattr(v.args[0], "name_hint", ""):
            return env[v.args[1].fields[0].name]
    raise AssertionError("no output dequantize in the quantized module")


def _mel(seed):
    return np.random.default_rng(seed).normal(0, 1.5, (1, 64, FRAMES)).astype(np.float32)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no host C compiler (cc)")
def test_generated_c_bit_exact_on_host(qmodel, tmp_path):
    """The generated C compiled for x86 equals the numpy reference (no ARM toolchain needed)."""
    rec = fw.generate(qmodel.mod, tmp_path / "fw", build_elf=False)
    assert rec["arena_bytes"] < rec["arena_naive_bytes"]  # buffers are reused by lifetime
    mel = _mel(0)
    x = fw.quantize_input(mel, rec["input"]["quantize"])
    y = fw.run_host(tmp_path / "fw", x, tuple(rec["output"]["shape"]), rec["output"]["dtype"])
    assert np.array_equal(y, _reference_int(qmodel, mel))


@pytest.fixture(scope="module")
def m4_dir(qmodel, tmp_path_factory):
    """``qmodel`` compiled for cortex-m4 and saved (skips without the toolchain or QEMU)."""
    import zsq_tvm

    if TOOLCHAIN or QEMU:
        pytest.skip(TOOLCHAIN or QEMU)
    return zsq_tvm.compile(qmodel, target="cortex-m4").save(tmp_path_factory.mktemp("m4") / "b")


@needs_arm
@needs_qemu
def test_cortex_m4_qemu_bit_exact(qmodel, m4_dir):
    import zsq_tvm

    b = zsq_tvm.load(m4_dir)
    f = b.firmware
    assert f["symbols"]["ok"], f["symbols"]
    assert f["size"]["flash_bytes"] <= f["flash_budget"] and f["size"]["ram_bytes"] <= f["ram_budget"]
    rep = zsq_tvm.check(b)
    assert rep["ok"] and rep["firmware"]["ok"]
    for seed in (0, 1):
        mel = _mel(seed)
        y, stats = b.run(mel, codes=True, return_stats=True)
        assert y.dtype == np.dtype(f["output"]["dtype"])
        assert np.array_equal(y, _reference_int(qmodel, mel)), f"seed {seed}: QEMU != reference"
        assert stats[0]["instructions"] > 0 and stats[0]["stack_used_bytes"] < f["stack_budget"]
        yh, _ = b.run_int(b.quantize_input(mel), host=True)
        assert np.array_equal(y, yh)


@needs_arm
@needs_qemu
def test_same_outputs_as_a_host_build(qmodel, m4_dir, tmp_path, capsys):
    """``Build.run`` and ``zsq run`` give the same float32 logits on Cortex-M as on the host (the host dequantizes
    the firmware's integer output with the module's output scale), and ``codes=True`` / ``--codes`` the same
    integer codes."""
    import zsq_tvm
    from relax_passes.reference import run_reference
    from zsq_tvm.cli import main

    host, m4 = zsq_tvm.compile(qmodel, target="host"), zsq_tvm.load(m4_dir)
    mel = np.concatenate([_mel(2), _mel(3)])  # a batch of two
    logits = host.run(mel)
    ref = np.concatenate([run_reference(qmodel.mod, m[None]) for m in mel])  # float32, bit-exact on the host
    assert logits.dtype == np.float32 and np.array_equal(logits, ref)
    np.testing.assert_array_equal(m4.run(mel), logits)  # same float32 values, bit for bit
    codes = host.run(mel, codes=True)
    assert codes.dtype == np.dtype(m4.firmware["output"]["dtype"]) == np.int16
    np.testing.assert_array_equal(m4.run(mel, codes=True), codes)
    assert np.array_equal(codes[:1], _reference_int(qmodel, mel[:1]))  # the input of the output dequantize
    assert m4.decode(m4.run(mel)) == host.decode(logits) == host.decode(codes)

    np.save(tmp_path / "mel.npy", mel[0])
    host_dir = host.save(tmp_path / "host")
    for args in ([], ["--codes"]):
        got = []
        for d in (host_dir, m4_dir):
            out = tmp_path / f"{d.name}{''.join(args)}.npy"
            assert main(["run", str(d), "--input", str(tmp_path / "mel.npy"), "--output", str(out)] + args) == 0
            got.append(np.load(out))
        assert got[0].dtype == (np.int16 if args else np.float32)
        np.testing.assert_array_equal(got[1], got[0])
        np.testing.assert_array_equal(got[0], (codes if args else logits)[:1])
    capsys.readouterr()


@needs_arm
def test_symbol_check_catches_float(tmp_path):
    c = tmp_path / "flt.c"
    c.write_text("float zsq_probe(float a, float b) { return a / b; }\n"
                 "void Reset_Handler(void) { volatile float r = zsq_probe(1.0f, 3.0f); (void)r; for (;;) {} }\n")
    obj, elf = tmp_path / "flt.o", tmp_path / "flt.elf"
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=soft", "-O1", "-ffreestanding"]
    subprocess.run(["arm-none-eabi-gcc", *flags, "-c", str(c), "-o", str(obj)], check=True)
    subprocess.run(["arm-none-eabi-gcc", *flags, "-nostdlib", str(obj), "-lgcc", "-Wl,-e,Reset_Handler",
                    "-o", str(elf)], check=True)
    for path in (obj, elf):
        rep = fw.check_symbols(path)
        assert not rep["ok"] and "__aeabi_fdiv" in rep["soft_float"], rep


def test_too_big_is_a_clear_error(qmodel, tmp_path):
    from zsq_tvm.backends.cortexm.build import compile_firmware

    with pytest.raises(fw.BudgetError) as ei:
        compile_firmware(qmodel, "cortex-m4", flash_kb=128, ram_kb=64)
    msg = str(ei.value)
    assert "does not fit cortex-m4" in msg and "weights" in msg and "arena" in msg and "raise the budget" in msg
    assert not list(tmp_path.iterdir())


def test_float_symbol_patterns():
    bad = ["__aeabi_fdiv", "__aeabi_dmul", "__aeabi_i2f", "__aeabi_ui2d", "__aeabi_l2f", "__aeabi_cfcmple",
           "__addsf3", "__divdf3", "__floatsisf", "__fixdfsi", "__extendsfdf2", "__truncdfsf2"]
    good = ["__aeabi_lmul", "__aeabi_idiv", "__aeabi_uldivmod", "__aeabi_llsl", "__divsi3", "memcpy", "zsq_run",
            "__tvm_ffi_fused_conv1d_cast"]
    assert all(fw._is_float_helper(s) for s in bad)
    assert not any(fw._is_float_helper(s) for s in good)

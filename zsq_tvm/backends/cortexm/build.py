"""``FirmwareBuild``: a :class:`zsq_tvm.build.Build` whose library is a Cortex-M firmware folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from zsq_tvm import artifacts
from zsq_tvm.backends.cortexm import firmware as fw
from zsq_tvm.build import Build, integer_only_report, pad_batch
from zsq_tvm.core.errors import ArtifactError, InputShapeError

FW_DIR = "firmware"


def _budget(kw_val, env, default):
    if kw_val is not None:
        return int(kw_val) * 1024
    v = os.environ.get(env)
    return int(v) * 1024 if v else default


def compile_firmware(q, target: str, flash_kb: int | None = None, ram_kb: int | None = None,
                     stack_bytes: int = fw.DEFAULT_STACK) -> "FirmwareBuild":
    """Quantized model → :class:`FirmwareBuild` (sources generated and ``fw.elf`` linked in a temp dir)."""
    import tvm

    from relax_passes.lowering import lower

    if q.frames is None:  # before any work: a static arena needs every tensor's size
        raise fw.FirmwareError("this quantized model takes any length (symbolic T); Cortex-M firmware plans a "
                               "static arena and needs a fixed one",
                               f"quantize it again with --frames T for {target} (e.g. --frames 100: 1 s windows)")
    _, _, dflash, dram = fw.BOARDS[target]
    flash = _budget(flash_kb, "ZSQ_CM_FLASH_KB", dflash)
    ram = _budget(ram_kb, "ZSQ_CM_RAM_KB", dram)
    tmp = Path(tempfile.mkdtemp(prefix="zsq-fw-"))
    try:
        rec = fw.generate(q.mod, tmp / FW_DIR, board=target, flash=flash, ram=ram, stack=stack_bytes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    io_report = integer_only_report(lower(q.mod))
    m = dict(q.manifest)
    m.update(artifacts.new_manifest(artifacts.KIND_BUILD))
    m.update(target=target, tvm_target=str(fw.BOARDS[target][0]) + " (c + static driver)", integer_only=io_report,
             firmware=rec, quantized_from={"created": q.manifest.get("created"), "source": q.manifest.get("source")})
    files = {"quant.json": q.metadata, "report.json": q.report()}
    if m.get("vocab"):
        files["vocab.json"] = m["vocab"]
    return FirmwareBuild(tmp / FW_DIR, artifacts.normalize(m), tvm.ir.save_json(q.mod), files, tmpdir=tmp)


class FirmwareBuild(Build):
    """Cortex-M build: ``run`` executes ``fw.elf`` under QEMU; the host dequantizes its integer output (float32
    logits equal to a host build's; ``run(mel, codes=True)``: the integer codes, ``run_int``: on a quantized input)."""

    def __init__(self, fw_dir, manifest, module_json=None, files=None, tmpdir=None):
        super().__init__(None, manifest, module_json, files)
        self.fw_dir = Path(fw_dir)
        self._tmpdir = tmpdir

    def __del__(self):
        if getattr(self, "_tmpdir", None) is not None and shutil is not None:  # None at interpreter exit
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    @property
    def firmware(self) -> dict:
        return self.manifest["firmware"]

    def summary(self) -> str:
        f = self.firmware
        s = f.get("size", {})
        return (f"{f['board']}: flash {s.get('flash_bytes', '?')} B (weights {f['weights_bytes']} B) of "
                f"{f['flash_budget']}; RAM {s.get('ram_bytes', '?')} B (arena {f['arena_bytes']} B, workspace "
                f"{f['workspace_bytes']} B, stack {f['stack_budget']} B) of {f['ram_budget']}; "
                f"{f['calls']} kernel calls; ELF symbols: {'ok' if f.get('symbols', {}).get('ok') else 'VIOLATIONS'}")

    def quantize_input(self, mel) -> np.ndarray:
        """Float mel → the int8 input the firmware takes (host-side input quantize)."""
        x = self._prepare(mel)
        return fw.quantize_input(x, self.firmware["input"]["quantize"])

    def run_int(self, x_int: np.ndarray, host: bool = False, length=None) -> tuple[np.ndarray, dict]:
        """The firmware on an already quantized input; ``length`` (int32, one per input) for a ``--time-mask``
        model (default: every frame valid)."""
        f = self.firmware
        shape, dtype = tuple(f["output"]["shape"]), f["output"]["dtype"]
        if f.get("length") is not None and length is None:
            length = np.full(f["length"]["shape"], x_int.shape[-1], np.int32)
        if host:
            return fw.run_host(self.fw_dir, x_int, shape, dtype, length=length), {}
        return fw.run_qemu(self.fw_dir, x_int, f["board"], shape, dtype, length=length)

    def run(self, mel, length=None, *, codes: bool = False, return_stats: bool = False, dequantize=None):
        """Like :meth:`zsq_tvm.build.Build.run` (float32 logits; ``codes=True``: the integer codes), on the
        firmware under QEMU; the host dequantizes the firmware's integer output with the output scale, as a host
        build's output dequantize does.  ``return_stats``: also QEMU's counts of each batch."""
        self._deprecated_dequantize(dequantize)
        f = self.firmware
        if f["input"]["quantize"] is None:
            raise ArtifactError("this firmware has no input quantize parameters", "compile again")
        xq = self.quantize_input(mel)
        if length is not None and f.get("length") is None:
            raise InputShapeError("this build has no length input (it was quantized with --no-time-mask, or its "
                                  "graph could not be masked)",
                                  "drop length, or quantize again without --no-time-mask")
        lengths = self._lengths(length, xq.shape[0], xq.shape[2]) if f.get("length") is not None else None
        B = f["input"]["shape"][0]
        outs, stats = [], []
        for i in range(0, xq.shape[0], B):
            n = min(B, xq.shape[0] - i)
            ln = None if lengths is None else pad_batch(lengths[i:i + B], B)
            y, st = self.run_int(pad_batch(xq[i:i + B], B), length=ln)
            outs.append(y[:n])
            stats.append(st)
        out = self._output(np.concatenate(outs), codes)
        return (out, stats) if return_stats else out

    def _output_codes(self) -> tuple[float | None, str | None]:
        """The firmware's output: the input of the module's output dequantize, with that dequantize's scale."""
        out = self.firmware["output"]
        scale = out.get("scale")
        return (scale if scale is not None else self.manifest.get("output_scale")), out.get("dtype")

    def check_firmware(self) -> dict:
        """Re-run the ELF symbol check (needs arm-none-eabi-nm)."""
        elf = self.fw_dir / "fw.elf"
        if not elf.exists():
            raise ArtifactError(f"{elf} is missing", "compile again with `zsq compile --target cortex-m4`")
        return fw.check_symbols(elf)

    def save(self, out_dir, overwrite: bool = False, inputs=()) -> Path:
        out = Path(out_dir)
        with artifacts.atomic_dir(out, overwrite=overwrite, kind=artifacts.KIND_BUILD, inputs=inputs) as tmp:
            shutil.copytree(self.fw_dir, tmp / FW_DIR, ignore=shutil.ignore_patterns("*.o", "host_run"))
            if self._module_json is not None:
                (tmp / "module.json").write_text(self._module_json)
            for name, obj in self._files.items():
                artifacts.write_json(tmp / name, obj)
            artifacts.write_manifest(tmp, self.manifest)
        return out

    @classmethod
    def load(cls, path, manifest: dict | None = None) -> "FirmwareBuild":
        """Open a verified Cortex-M build folder.  Its firmware folder is copied to a private temporary
        folder, where ``run`` makes ``host_run`` and QEMU runs ``fw.elf``: the build folder itself is never
        written (its hashes stay valid) and what runs is what was verified."""
        m = manifest if manifest is not None else artifacts.read_manifest(path, artifacts.KIND_BUILD)
        if not any(k.startswith(FW_DIR + "/") for k in m["files"]):
            raise ArtifactError(f"{str(path)!r} has no {FW_DIR}/", "compile again with `zsq compile`")
        module_json = artifacts.read_module_text(path, m)  # before the copy: nothing to clean up if it fails
        tmp = Path(tempfile.mkdtemp(prefix="zsq-fw-"))
        try:
            for rel in m["files"]:
                if rel.startswith(FW_DIR + "/"):
                    dst = tmp / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    artifacts.verified_copy(path, rel, m, dst.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(tmp / FW_DIR, artifacts.without_files(m), module_json, tmpdir=tmp)

    def __repr__(self):
        return f"FirmwareBuild(target={self.target!r}, frames={self.frames})"

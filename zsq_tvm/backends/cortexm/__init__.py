"""Cortex-M targets (``cortex-m4``, ``cortex-m7``): TVM `c` kernels + a static firmware driver.

``zsq compile q/ --target cortex-m4 -o fw/`` writes a self-contained firmware folder (C sources,
linker script, Makefile, ``fw.elf``); ``zsq check fw/`` adds the ELF symbol check (no soft-float,
libm or malloc) to the integer-only report; ``zsq run fw/ --input mel.npy`` runs the firmware under
QEMU (``mps2-an386`` / ``mps2-an500``) and returns float32 logits, dequantized on the host with the output scale
of the module's output dequantize -- the same values as a host build's (``--codes``: the integer codes).
Budgets: ``flash_kb``/``ram_kb`` arguments or the ``ZSQ_CM_FLASH_KB`` / ``ZSQ_CM_RAM_KB`` environment
variables (default 1024 KB / 256 KB).
"""

from __future__ import annotations

from zsq_tvm.backends.cortexm.build import FirmwareBuild, compile_firmware
from zsq_tvm.backends.cortexm.firmware import BOARDS
from zsq_tvm.targets import register_target

__all__ = ["BOARDS", "FirmwareBuild", "compile_firmware"]


def _c_target(mcpu):
    def make():
        import tvm

        return tvm.target.Target({"kind": "c", "mcpu": mcpu})
    return make


def _load(path, manifest):
    return FirmwareBuild.load(path, manifest=manifest)


def _check(build):
    """The linked ELF holds no soft-float, libm or malloc symbol (:meth:`FirmwareBuild.check_firmware`)."""
    fw = build.check_firmware()
    return {"firmware": fw}, [f"fw.elf: {v}" for v in fw["violations"]]


for _name, (_mcpu, _machine, _f, _r) in BOARDS.items():
    register_target(_name, _c_target(_mcpu), f"{_mcpu} firmware (TVM c + static driver, QEMU {_machine})",
                    runs_on_host=False, compile_model=compile_firmware, load=_load, check=_check)

"""The system (Debian/apt) packages the test suite uses, each with what the tests look for on the machine.

Tests that need one skip without it, so a machine without them would pass with those tests silently skipped.
``./run-tests`` therefore installs the missing ones first (``python3 tests/system_packages.py`` prints their
names, one line) and sets ``ZSQ_REQUIRE_TOOLCHAINS=1``, under which ``tests/conftest.py`` fails the run when one is
still missing and turns a test's skip for lack of one into a failure.  Standard library only: it runs before
anything is installed.
"""

from __future__ import annotations

import os
import shutil
import sys

#: Debian package -> (what the tests look for: a command on PATH or an absolute path, the tests that use it)
PACKAGES = {
    "gcc-arm-none-eabi": ("arm-none-eabi-gcc", "Cortex-M firmware builds (test_cortexm, test_time_mask)"),
    "libnewlib-arm-none-eabi": ("/usr/include/newlib", "the arm-none-eabi toolchain's C headers and libraries"),
    "qemu-system-arm": ("qemu-system-arm", "running the Cortex-M firmware (test_cortexm, test_time_mask)"),
    "make": ("make", "the firmware's Makefile"),
    "gcc": ("cc", "TVM's library export, the firmware's host build (test_cortexm)"),
    "espeak-ng": ("espeak-ng", "synthesized speech (test_nemo_io)"),
    "pocketsphinx-testdata": ("/usr/share/pocketsphinx/test/data/librivox", "real speech (test_evaluate)"),
}

#: words a test's skip reason holds when it skips for lack of one of them (tests/conftest.py)
SKIP_WORDS = ("toolchain", "arm-none-eabi", "qemu", "espeak", "pocketsphinx", "C compiler")


def present(probe: str) -> bool:
    return os.path.exists(probe) if os.path.isabs(probe) else shutil.which(probe) is not None


def missing() -> list[str]:
    """The packages of :data:`PACKAGES` whose probe finds nothing, in order."""
    return [pkg for pkg, (probe, _) in PACKAGES.items() if not present(probe)]


if __name__ == "__main__":
    print(" ".join(missing()))
    sys.exit(0)

"""User-facing errors.

Every error raised for bad user input is a :class:`ZsqError`: its message names the
cause and the fix in one line, and the CLI prints exactly that line to stderr and exits
with status 2. Anything else escaping the CLI is a bug in zsq-tvm.
"""

from __future__ import annotations

__all__ = [
    "ZsqError",
    "ModelLoadError",
    "UnsupportedOpsError",
    "InputShapeError",
    "TargetError",
    "BitWidthError",
    "ConfigError",
    "CalibrationError",
    "ArtifactError",
    "IntegerOnlyViolation",
    "NotAvailableError",
]


class ZsqError(Exception):
    """Base class: a problem the user can fix.  ``str(err)`` is one line: cause + fix."""

    exit_code = 2

    def __init__(self, cause: str, fix: str | None = None):
        self.cause = cause.rstrip(". ")
        self.fix = fix.rstrip(". ") if fix else None
        msg = self.cause + "." + (f" Fix: {self.fix}." if self.fix else "")
        super().__init__(" ".join(msg.split()))  # one line, always


class ModelLoadError(ZsqError):
    """The model file is missing, truncated, corrupt, or fails ``onnx.checker``."""


class UnsupportedOpsError(ZsqError):
    """The model contains ops our pipeline cannot quantize (all of them listed at once)."""

    def __init__(self, unsupported: dict[str, list[str]], supported: list[str] | tuple[str, ...]):
        self.unsupported = dict(unsupported)
        parts = []
        for op, nodes in sorted(self.unsupported.items()):
            shown = ", ".join(nodes[:5]) + (f", … (+{len(nodes) - 5})" if len(nodes) > 5 else "")
            parts.append(f"{op} (nodes: {shown})")
        super().__init__(
            f"model has {sum(len(v) for v in self.unsupported.values())} node(s) with ops the "
            f"integer-only pipeline does not support: " + "; ".join(parts),
            "re-export the model without these ops (e.g. replace them with Conv/MatMul/Relu/Add "
            "or simplify the graph with onnxsim); supported ops: " + ", ".join(sorted(supported)),
        )


class InputShapeError(ZsqError):
    """The model input is not a mel spectrogram ``[B, F, T]`` or the frames are wrong."""


class TargetError(ZsqError):
    """Unknown or unusable compilation target."""


class BitWidthError(ZsqError):
    """``wbits``/``abits`` outside the supported 2..8 range."""


class ConfigError(ZsqError):
    """Any other invalid option value."""


class CalibrationError(ZsqError):
    """Calibration data missing, empty or of the wrong shape."""


class ArtifactError(ZsqError):
    """An artifact directory is missing, not ours, of the wrong kind, or would be overwritten."""


class IntegerOnlyViolation(ZsqError):
    """The lowered module still executes floating point outside the allowed boundary."""

    exit_code = 1


class NotAvailableError(ZsqError):
    """A feature whose implementation is not installed / not available yet."""

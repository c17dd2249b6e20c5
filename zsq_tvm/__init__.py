"""zsq-tvm: integer-only zero-shot quantization of CTC speech models, compiled with Apache TVM.

    import zsq_tvm
    q = zsq_tvm.quantize("model.onnx", zsq_tvm.QuantConfig(wbits=8, abits=8, frames=256))
    b = zsq_tvm.compile(q, target="host")
    logits = b.run(mel)
"""

__version__ = "0.1.0"

from zsq_tvm.core.errors import ZsqError  # noqa: E402

_LAZY = {
    "QuantConfig": "api", "QuantizedModel": "api", "quantize": "api", "compile": "api",
    "check": "api", "report": "api", "load": "api", "TimeMaskWarning": "api", "Build": "build",
    "Vocab": "ctc", "greedy_decode": "ctc", "QUARTZNET_VOCAB": "ctc",
    "synthesize": "synthesize", "SynthConfig": "synthesize",
}

__all__ = ["__version__", "ZsqError", *_LAZY]


def __getattr__(name):  # lazy: `import zsq_tvm` must not pull in TVM/torch
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'zsq_tvm' has no attribute {name!r}")

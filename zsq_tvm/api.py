"""The one facade (torchao style): everything the ``zsq`` command line does, as Python calls.

    import zsq_tvm
    q = zsq_tvm.quantize("quartznet.onnx", zsq_tvm.QuantConfig(wbits=8, abits=8, frames=256))
    q.save("out/q")                      # or zsq_tvm.QuantizedModel.load("out/q")
    b = zsq_tvm.compile(q, target="host")
    logits = b.run(mel)                  # mel: float32 [B, 64, 256]
    print(b.transcribe(mel), zsq_tvm.check(b)["ok"], zsq_tvm.report(q))

The four steps live in :mod:`zsq_tvm.pipeline`; evaluation, tuning, benchmarking, synthesis and the demo
in their own modules (each imports TVM and torch only inside the calls that need them).
:mod:`zsq_tvm.cli` calls nothing but this module.
"""

from __future__ import annotations

from zsq_tvm import __version__
from zsq_tvm.artifacts import (DISK_ERRNOS, KIND_BUILD, KIND_QUANTIZED, KIND_SYNTH, _jsonable as jsonable,
                               check_output_file, disk_error, ensure_output_free, write_output_file)
from zsq_tvm.benchmark import compare_onnx, format_compare, set_threads
from zsq_tvm.build import Build
from zsq_tvm.cost import format_report
from zsq_tvm.demo import run_demo
from zsq_tvm.evaluate import evaluate, format_result as format_eval
from zsq_tvm.frontend.onnx_safety import set_memory_budget
from zsq_tvm.nemo_io import export_nemo
from zsq_tvm.pipeline import (QuantConfig, QuantizedModel, TimeMaskWarning, check, compile, load, quantize,  # noqa: A004
                              report)
from zsq_tvm.synth_figure import plot_figure3 as plot_synth_figure
from zsq_tvm.synthesize import SynthConfig, save_batches as save_synth, synthesize
from zsq_tvm.targets import list_targets
from zsq_tvm.transcribe import format_transcript, transcribe
from zsq_tvm.tune import tune
from zsq_tvm.tune_files import tune_files

__all__ = ["__version__", "QuantConfig", "QuantizedModel", "TimeMaskWarning", "Build", "quantize", "compile", "check", "report", "load",
           "list_targets", "format_report", "set_memory_budget", "synthesize", "SynthConfig", "save_synth",
           "plot_synth_figure", "export_nemo", "evaluate", "format_eval", "tune", "tune_files", "compare_onnx", "format_compare",
           "set_threads", "run_demo", "transcribe", "format_transcript", "KIND_QUANTIZED", "KIND_BUILD", "KIND_SYNTH", "ensure_output_free",
           "check_output_file", "write_output_file", "DISK_ERRNOS", "disk_error", "jsonable"]

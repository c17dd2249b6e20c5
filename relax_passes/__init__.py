"""Relax passes of zsq-tvm's integer-only pipeline (each a ``tvm.transform`` module pass).

Call sequence (see :mod:`zsq_tvm.calibrate` for the full example)::

    mod = from_onnx(onnx_model, {"mel": (1, F, T)}, keep_params_in_input=False)
    mod, bn_stats = fold_batchnorm(mod, onnx_model=onnx_model)           # or FoldBatchNorm() as a pass
    ranges = zsq_tvm.calibrate.calibrate(mod, batches, method="minmax")
    qmod, meta = quantize_module(mod, ranges, wbits=8, abits=8)           # or Quantize(...) as a pass
    qmod, masked = time_mask(qmod)  # zsq quantize's default: a `length` input, padding masked before time-mixing convs
    qmod = symbolic_time(qmod)      # or instead: one module for every length (zsq quantize without --frames)
    IntegerOnlyCheck()(relax_passes.lowering.lower(qmod))                 # raises on float

Every pass is also a function that returns what it found as a value (``fold_batchnorm`` -> BN statistics,
``quantize_module`` -> scales, multipliers and overflow proofs); no result is kept on a pass object.
"""

from relax_passes.fold_batchnorm import FoldBatchNorm, extract_bn_stats, fold_batchnorm, onnx_batchnorm_nodes
from relax_passes.integer_only_check import IntegerOnlyCheck, assert_integer_only, check_integer_only
from relax_passes.quantize import INPUT_QUANTIZE, OUTPUT_DEQUANTIZE, ROLE_ATTR, SUPPORTED_OPS, Quantize, quantize_module
from relax_passes.symbolic_time import SymbolicTime, SymbolicTimeError, symbolic_time
from relax_passes.time_mask import TimeMask, TimeMaskError, time_mask

__all__ = [
    "FoldBatchNorm",
    "fold_batchnorm",
    "extract_bn_stats",
    "onnx_batchnorm_nodes",
    "Quantize",
    "quantize_module",
    "SUPPORTED_OPS",
    "ROLE_ATTR",
    "INPUT_QUANTIZE",
    "OUTPUT_DEQUANTIZE",
    "TimeMask",
    "TimeMaskError",
    "time_mask",
    "SymbolicTime",
    "SymbolicTimeError",
    "symbolic_time",
    "IntegerOnlyCheck",
    "check_integer_only",
    "assert_integer_only",
]

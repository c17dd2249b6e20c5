"""Relax passes of zsq-tvm's integer-only pipeline (each a ``tvm.transform`` module pass).

Call sequence (see :mod:`zsq_tvm.calibrate` for the full example)::

    mod = from_onnx(onnx_model, {"mel": (1, F, T)}, keep_params_in_input=False)
    fold = FoldBatchNorm(onnx_model=onnx_model); mod = fold(mod)          # fold.bn_stats
    ranges = zsq_tvm.calibrate.calibrate(mod, batches, method="minmax")
    quant = Quantize(ranges, wbits=8, abits=8); qmod = quant(mod)          # quant.metadata
    qmod = TimeMask()(qmod)      # optional: a `length` input, padding masked before time-mixing convs
    IntegerOnlyCheck()(zsq_tvm.lowering.lower(qmod))                       # raises on float
"""

from .fold_batchnorm import FoldBatchNorm, extract_bn_stats, onnx_batchnorm_nodes
from .integer_only_check import IntegerOnlyCheck, assert_integer_only, check_integer_only
from .quantize import INPUT_QUANTIZE, OUTPUT_DEQUANTIZE, ROLE_ATTR, SUPPORTED_OPS, Quantize
from .time_mask import TimeMask, TimeMaskError

__all__ = [
    "FoldBatchNorm",
    "extract_bn_stats",
    "onnx_batchnorm_nodes",
    "Quantize",
    "SUPPORTED_OPS",
    "ROLE_ATTR",
    "INPUT_QUANTIZE",
    "OUTPUT_DEQUANTIZE",
    "TimeMask",
    "TimeMaskError",
    "IntegerOnlyCheck",
    "check_integer_only",
    "assert_integer_only",
]

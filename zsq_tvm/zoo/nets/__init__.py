"""Torch definitions of the acoustic models we quantize, with NeMo-compatible parameter names."""
from zsq_tvm.zoo.nets.convasr import ARCHS, VOCAB, ConvCTCModel, count_params
from zsq_tvm.zoo.nets.conformer import CONFORMER_ARCHS, ConformerCTCModel

ALL_ARCHS = sorted(list(ARCHS) + list(CONFORMER_ARCHS))


def randomize_batchnorm(model, generator=None):
    """Give every ``BatchNorm1d`` of ``model`` non-trivial statistics and affine parameters, as after training:
    ``running_mean ~ U(-0.2, 0.2)``, ``running_var ~ U(0.5, 2)``, ``weight ~ U(0.5, 1.5)``, ``bias ~ U(-0.1, 0.1)``.

    Why: a freshly initialised net has identity BatchNorms (mean 0, var 1, weight 1, bias 0) and its default
    conv init shrinks the signal by ~2.5x per block, so through QuartzNet-10x5/15x5's 12-17 blocks the
    activations vanish (~1e-7 at the decoder), calibration finds a near-zero range, and a bias divided by that
    scale leaves int32.  With these statistics every block re-injects an O(0.1) offset (the folded BN bias), so
    random-weight stand-ins quantize like trained nets and BN folding is exercised.  The values are drawn in
    module order from ``generator`` (a ``torch.Generator``; None: torch's global RNG, what the benchmarks seed
    with ``torch.manual_seed``).  Returns ``model``."""
    import torch

    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm1d):
            with torch.no_grad():
                mod.running_mean.uniform_(-0.2, 0.2, generator=generator)
                mod.running_var.uniform_(0.5, 2.0, generator=generator)
                mod.weight.uniform_(0.5, 1.5, generator=generator)
                mod.bias.uniform_(-0.1, 0.1, generator=generator)
    return model


def build_model(arch: str, **kw):
    """Build an untrained model by architecture name (see :data:`ALL_ARCHS`)."""
    if arch in CONFORMER_ARCHS:
        return ConformerCTCModel(arch, **kw)
    if arch in ARCHS:
        return ConvCTCModel(arch, **kw)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ALL_ARCHS)}")


__all__ = ["ARCHS", "CONFORMER_ARCHS", "ALL_ARCHS", "VOCAB", "ConvCTCModel", "ConformerCTCModel", "build_model",
           "count_params", "randomize_batchnorm"]

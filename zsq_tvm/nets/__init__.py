"""Torch definitions of the acoustic models we quantize, with NeMo-compatible parameter names."""
from .convasr import ARCHS, VOCAB, ConvCTCModel, count_params
from .conformer import CONFORMER_ARCHS, ConformerCTCModel

ALL_ARCHS = sorted(list(ARCHS) + list(CONFORMER_ARCHS))


def build_model(arch: str, **kw):
    """Build an untrained model by architecture name (see :data:`ALL_ARCHS`)."""
    if arch in CONFORMER_ARCHS:
        return ConformerCTCModel(arch, **kw)
    if arch in ARCHS:
        return ConvCTCModel(arch, **kw)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ALL_ARCHS)}")


__all__ = ["ARCHS", "CONFORMER_ARCHS", "ALL_ARCHS", "VOCAB", "ConvCTCModel", "ConformerCTCModel", "build_model",
           "count_params"]

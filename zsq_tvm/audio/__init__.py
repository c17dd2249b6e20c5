"""Audio front end: waveform -> log-mel features (float, before the integer boundary)."""
from zsq_tvm.audio.mel import MelFrontend, MelConfig, load_wav

__all__ = ["MelFrontend", "MelConfig", "load_wav"]

"""Offline corpus: text sources, TTS synthesis, NeMo-style manifests."""

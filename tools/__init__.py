"""Deployment tooling for lent GPU machines: bundles built here, checks and training runs on the device.

Python modules run from the repository root as ``python3 -m tools.NAME``; the shell scripts as
``bash tools/NAME.sh`` (they change to the repository root themselves).
"""

"""Experiments and measurements on the product (not part of it; nothing in zsq_tvm/ imports this).

Each module is a script run from the repository root as ``python3 -m bench.NAME`` (``--help`` for its
options); its results go to ``bench/results/`` (indexed in ``bench/results/README.md``).
"""

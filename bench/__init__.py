"""Benchmarks run by ``make bench``.

Each ``bench/bench_*.py`` module has a ``main()`` that prints our figure beside a baseline measured
in the same run, and their ratio. ``python -m bench [NAME ...]`` runs them all, or only those named.
"""

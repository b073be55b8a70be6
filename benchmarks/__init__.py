"""Benchmarks, each runnable as ``python -m benchmarks.<name>``.

Each reports ratios against a floor measured in the same run.
"""

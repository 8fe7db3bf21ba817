"""Fixtures for the tests under `tests/`.

The JAX environment (8 CPU devices, rank promotion raising), the hypothesis profiles and the
doctest namespace are set up once in the repository-root `conftest.py`, which pytest loads
before this file; put fixtures that only `tests/` needs here.
"""

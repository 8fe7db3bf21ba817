"""Transforms: JAX transforms lifted to Modules and other graph objects.

``_lift.py`` is the one mechanism (split, rebuild inside the trace, collect, write back);
each other file is a thin adapter mapping its transform's arguments onto the flat leaves.
"""

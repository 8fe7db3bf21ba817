"""Runnable examples: ``python -m nnx.examples.digits`` trains a CNN on scikit-learn's digits."""

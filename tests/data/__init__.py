"""Tests of mi_jax.data."""

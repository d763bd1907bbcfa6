"""Data generation (PyTorch side): zoom into micro-regions with teachers, distill back to the full image.

Never imports jax. Shares only `zwz_jax.records` with the training side.
"""

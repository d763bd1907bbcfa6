"""zwz-jax: Region-to-Image Distillation ("Zooming without Zooming") in JAX/Flax."""

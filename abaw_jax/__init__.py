"""abaw_jax: facial affect recognition in the wild (ABAW / Aff-Wild2) in JAX and Flax."""

__version__ = "0.1.0"

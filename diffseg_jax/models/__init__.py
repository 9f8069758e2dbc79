"""Neural networks (they know nothing of diffusion)."""

"""ddpmkit: Denoising Diffusion Probabilistic Models for 2-D points and small images."""

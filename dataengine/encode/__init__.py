"""Encode: frames to latents through diffusers' autoencoders, and the tiny ones built offline for tests."""

from dataengine.encode.tiny_vae import VAEKind, ensure_tiny_vae, resolve_vae
from dataengine.encode.vae import VAE, VAEConfig, load_vae, normalization

__all__ = ["VAE", "VAEConfig", "VAEKind", "ensure_tiny_vae", "load_vae", "normalization", "resolve_vae"]

"""Every training loop of the project, on the library's records and stages.

``dit``      the compact DiT (flow matching) that streams latent shards: ``dataengine train``
``distill``  a small captioner distilled from a teacher's captions: ``dataengine distill``
``vae``      a tiny Wan-architecture VAE on world clips and real footage: ``dataengine train-vae``
``core``     what the three share: the warm-up and cosine schedule pieces, the steps-or-minutes budget,
             atomic file writes and the loss-curve plot
"""

"""ImgAE-Dx JAX: unsupervised anomaly detection in chest X-rays with JAX/Flax.

Autoencoders (a denoising U-Net, the Reversed Autoencoder and a plain AE) are trained
on normal NIH ChestX-ray14 images only; images they reconstruct badly are flagged.
"""

__version__ = "0.1.0"

"""``ra``: the Reversed Autoencoder (Bercea et al., MIDL 2023).

Soft-IntroVAE training with an added multi-scale embedding loss, with separate encoder and
decoder optimisers. The loss pieces are the small pure functions :func:`kl_divergence`,
:func:`reconstruction_error`, :func:`exp_elbo` and :func:`embedding_loss`.

Anomaly map: the residual ``|x - x_hat|`` with ``x_hat = D(mu(x))`` (``model.ra.anomaly_map:
residual``, the default, chosen on validation patients), or the residual multiplied by a
saliency map (``saliency``). Deviation from the paper: there the map is
``|CLAHE(x_hat) - CLAHE(x)|`` times a Gaussian-smoothed LPIPS saliency. Pretrained LPIPS
weights cannot ship offline and no CLAHE is applied here; the ``saliency`` map uses the RA
encoder's own multi-scale discrepancy between ``x`` and ``x_hat`` (:func:`encoder_saliency`),
smoothed with a Gaussian of ``model.ra.saliency_sigma`` pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import nnx

from imgae_dx_jax.families.base import Family, MakeTransform, Metrics, Optimizers
from imgae_dx_jax.families.losses import cosine_distance, eval_view, gaussian_blur, mse
from imgae_dx_jax.models.reversed_ae import ReversedAutoencoder
from imgae_dx_jax.schema import RAConfig

# --------------------------------------------------------------------------- loss pieces


def reparameterize(key: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Sample ``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``."""
    return mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Per-sample KL(N(mu, exp(logvar)) || N(0, I)), summed over the latent axis: [B]."""
    return -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)


def reconstruction_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Per-image sum of squared errors over all pixels and channels: [B]."""
    return jnp.sum(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=-1)


def exp_elbo(
    rec: jax.Array, kl: jax.Array, scale: float, beta_rec: float, beta_neg: float
) -> jax.Array:
    """Soft-IntroVAE's batch mean of ``exp(-2 * scale * (beta_rec * rec + beta_neg * kl))``.

    Args:
        rec: per-image reconstruction errors [B] (:func:`reconstruction_error`).
        kl: per-image KL divergences [B] (:func:`kl_divergence`).
        scale: ``1 / (H * W * C)``.
        beta_rec: reconstruction weight.
        beta_neg: KL weight of the negative (reconstructed or generated) samples.
    """
    return jnp.mean(jnp.exp(-2.0 * scale * (beta_rec * rec + beta_neg * kl)))


def embedding_loss(emb_a: Sequence[jax.Array], emb_b: Sequence[jax.Array]) -> jax.Array:
    """RA's reversed embedding loss: sum over scales of ``0.5 * MSE + mean(1 - cos sim)``.

    As ci-ber/RA's ``EmbeddingLoss``: the cosine similarity is taken between each image's two
    *flattened* embeddings (one number per image and scale), then averaged over the batch.

    Args:
        emb_a: the encoder's multi-scale embeddings of the input, each [B, h, w, C].
        emb_b: those of its (detached) reconstruction, same shapes.
    """
    return sum(
        (
            0.5 * mse(a, b)
            + jnp.mean(cosine_distance(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)))
            for a, b in zip(emb_a, emb_b, strict=True)
        ),
        start=jnp.zeros(()),
    )


def encoder_saliency(
    emb_x: list[jax.Array], emb_hat: list[jax.Array], size: tuple[int, int], sigma: float
) -> jax.Array:
    """Multi-scale encoder discrepancy between an image and its reconstruction: [B, H, W].

    Per scale ``1 - cosine similarity`` over channels, bilinearly upsampled to ``size``,
    averaged over the scales, clipped at 0 and smoothed with a Gaussian of ``sigma`` pixels.
    """
    height, width = size
    maps = [
        jax.image.resize(cosine_distance(a, b), (a.shape[0], height, width), method="bilinear")
        for a, b in zip(emb_x, emb_hat, strict=True)
    ]
    return gaussian_blur(jnp.maximum(sum(maps) / len(maps), 0.0), sigma)


def in_pairs(module: Callable[..., Any], a: jax.Array, b: jax.Array) -> tuple[Any, Any]:
    """``(module(a), module(b))`` computed in one call on the concatenated batch.

    ``module`` (the RA encoder or decoder) normalises the two halves separately and updates
    its running statistics with ``a``'s, then ``b``'s (``groups=2``), so the results are those
    of the two calls, in fewer, larger operations: a smaller program that compiles faster.
    """
    out = module(jnp.concatenate([a, b]), groups=2)
    n = a.shape[0]
    return jax.tree.map(lambda t: t[:n], out), jax.tree.map(lambda t: t[n:], out)


# --------------------------------------------------------------------------- roles


def build(
    cfg: RAConfig, image_size: int, fast: bool, dtype: Any, rngs: nnx.Rngs
) -> ReversedAutoencoder:
    """The Reversed Autoencoder of ``cfg`` for ``image_size`` square images."""
    return ReversedAutoencoder(cfg.widths, cfg.zdim, image_size, fast=fast, dtype=dtype, rngs=rngs)


def optimizers(cfg: RAConfig, model: nnx.Module, make_transform: MakeTransform) -> Optimizers:
    """Separate optimisers for the encoder and the decoder."""
    ra = cast(ReversedAutoencoder, model)
    return {
        "encoder": nnx.Optimizer(ra.encoder, make_transform(cfg.learning_rate), wrt=nnx.Param),
        "decoder": nnx.Optimizer(ra.decoder, make_transform(cfg.learning_rate), wrt=nnx.Param),
    }


def encoder_loss(
    cfg: RAConfig,
    encoder: nnx.Module,
    decoder: nnx.Module,
    batch: jax.Array,
    z_prior: jax.Array,
    key: jax.Array,
) -> tuple[jax.Array, Metrics]:
    """Soft-IntroVAE's encoder loss with RA's embedding loss, as ci-ber/RA computes it.

    ``scale * (beta_rec * rec + beta_kl * KL) + 0.25 * (expELBO(rec) + expELBO(fake)) +
    embedding_weight * L_emb``. As in the authors' trainer, the reconstruction ``x_rec`` and the
    generated ``fake`` enter the encoder detached, but ``x_rec`` stays attached as the *target*
    of its re-reconstruction in expELBO(rec), so that term also reaches the encoder through
    ``x_rec = D(z(x))``. ``fake`` has no path to the encoder (the decoder is not trained here).

    Args:
        cfg: the ``model.ra`` section.
        encoder: the encoder (its parameters are what this loss is differentiated for).
        decoder: the decoder.
        batch: the real images [B, H, W, 1].
        z_prior: latent samples from the prior [B, zdim] that generate ``fake``.
        key: the reparameterisation key.

    Returns:
        The loss and its terms (``rec``, ``kl``, ``exp_elbo_rec``, ``exp_elbo_fake``, ``emb``),
        plus ``z``, the sampled latent code of ``batch``.
    """
    scale = 1.0 / (batch.shape[1] * batch.shape[2] * batch.shape[3])
    k_z, k_rec, k_fake = jax.random.split(key, 3)
    mu, logvar, emb_x = encoder(batch)
    z = reparameterize(k_z, mu, logvar)
    x_rec, fake = in_pairs(decoder, z, z_prior)
    fake = jax.lax.stop_gradient(fake)
    rec = jnp.mean(reconstruction_error(batch, x_rec))
    kl = jnp.mean(kl_divergence(mu, logvar))
    (mu_r, logvar_r, emb_r), (mu_f, logvar_f, _) = in_pairs(
        encoder, jax.lax.stop_gradient(x_rec), fake
    )
    rec_of_rec, rec_of_fake = in_pairs(
        decoder,
        reparameterize(k_rec, mu_r, logvar_r),
        reparameterize(k_fake, mu_f, logvar_f),
    )
    rec_rec = reconstruction_error(x_rec, rec_of_rec)
    rec_fake = reconstruction_error(fake, rec_of_fake)
    elbo_rec = exp_elbo(rec_rec, kl_divergence(mu_r, logvar_r), scale, cfg.beta_rec, cfg.beta_neg)
    elbo_fake = exp_elbo(rec_fake, kl_divergence(mu_f, logvar_f), scale, cfg.beta_rec, cfg.beta_neg)
    emb = embedding_loss(emb_x, emb_r)
    loss = (
        scale * (cfg.beta_rec * rec + cfg.beta_kl * kl)
        + 0.25 * (elbo_rec + elbo_fake)
        + cfg.embedding_weight * emb
    )
    metrics = {
        "rec": rec,
        "kl": kl,
        "exp_elbo_rec": elbo_rec,
        "exp_elbo_fake": elbo_fake,
        "emb": emb,
        "z": z,
    }
    return loss, metrics


def train_step(
    cfg: RAConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """One Soft-IntroVAE step with RA's embedding loss: an encoder update, then a decoder one.

    Metrics (batch means): ``loss`` = ``loss_enc + loss_dec``; ``rec`` and ``kl`` of the real
    images; ``exp_elbo_rec``/``exp_elbo_fake`` and ``emb`` of the encoder loss
    (:func:`encoder_loss`); ``kl_rec``/``kl_fake``, the KL of the re-encoded reconstructions
    and generated samples in the decoder loss.
    """
    model.train()
    ra = cast(ReversedAutoencoder, model)
    encoder, decoder = ra.encoder, ra.decoder
    scale = 1.0 / (batch.shape[1] * batch.shape[2] * batch.shape[3])
    k_prior, k_enc, k_dec_rec, k_dec_fake = jax.random.split(key, 4)
    z_prior = jax.random.normal(k_prior, (batch.shape[0], ra.zdim), batch.dtype)

    def enc_loss(enc: nnx.Module, dec: nnx.Module) -> tuple[jax.Array, Metrics]:
        return encoder_loss(cfg, enc, dec, batch, z_prior, k_enc)

    (loss_enc, enc_metrics), grads = nnx.value_and_grad(enc_loss, has_aux=True)(encoder, decoder)
    optimizers["encoder"].update(encoder, grads)
    z = jax.lax.stop_gradient(enc_metrics.pop("z"))

    def decoder_loss(dec: nnx.Module, enc: nnx.Module) -> tuple[jax.Array, Metrics]:
        x_rec, fake = in_pairs(dec, z, z_prior)
        rec = jnp.mean(reconstruction_error(batch, x_rec))
        (mu_r, logvar_r, _), (mu_f, logvar_f, _) = in_pairs(enc, x_rec, fake)
        z_rec = jax.lax.stop_gradient(reparameterize(k_dec_rec, mu_r, logvar_r))
        z_fake = jax.lax.stop_gradient(reparameterize(k_dec_fake, mu_f, logvar_f))
        rec_of_rec, rec_of_fake = in_pairs(dec, z_rec, z_fake)
        rec_rec = jnp.mean(reconstruction_error(jax.lax.stop_gradient(x_rec), rec_of_rec))
        rec_fake = jnp.mean(reconstruction_error(jax.lax.stop_gradient(fake), rec_of_fake))
        kl_rec = jnp.mean(kl_divergence(mu_r, logvar_r))
        kl_fake = jnp.mean(kl_divergence(mu_f, logvar_f))
        loss = scale * (
            cfg.beta_rec * rec
            + 0.5 * cfg.beta_kl * (kl_rec + kl_fake)
            + cfg.gamma_r * 0.5 * cfg.beta_rec * (rec_rec + rec_fake)
        )
        return loss, {"kl_rec": kl_rec, "kl_fake": kl_fake}

    (loss_dec, dec_metrics), grads = nnx.value_and_grad(decoder_loss, has_aux=True)(
        decoder, encoder
    )
    optimizers["decoder"].update(decoder, grads)
    return {
        "loss": loss_enc + loss_dec,
        "loss_enc": loss_enc,
        "loss_dec": loss_dec,
        **enc_metrics,
        **dec_metrics,
    }


def eval_losses(cfg: RAConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: MSE of the mean-latent reconstruction ``D(mu)``; ``kl``: mean KL (no sampling).

    ``key`` is unused: validation is deterministic.
    """
    del cfg, key
    view = cast(ReversedAutoencoder, eval_view(model))
    mu, logvar, _ = view.encoder(batch)
    return {
        "loss": mse(view.decoder(mu), batch),
        "kl": jnp.mean(kl_divergence(mu, logvar)),
    }


def anomaly_map(cfg: RAConfig, model: nnx.Module, batch: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``|x - D(mu(x))|``, times the reconstruction's encoder saliency if ``cfg`` asks for it.

    ``cfg.anomaly_map``: ``residual`` (the default) or ``saliency``.
    """
    ra = cast(ReversedAutoencoder, model)
    mu, _, emb_x = ra.encoder(batch)
    x_hat = ra.decoder(mu)
    if cfg.anomaly_map == "residual":
        return x_hat, jnp.abs(batch - x_hat)[..., 0]
    _, _, emb_hat = ra.encoder(x_hat)
    size = (batch.shape[1], batch.shape[2])
    saliency = encoder_saliency(emb_x, emb_hat, size, cfg.saliency_sigma)
    return x_hat, jnp.abs(batch - x_hat)[..., 0] * saliency


FAMILY = Family(build, optimizers, train_step, eval_losses, anomaly_map)

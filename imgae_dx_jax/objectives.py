"""Losses and jit-able training steps of each model family, chosen by name.

:func:`get_objective` returns an :class:`Objective`: how to build the optimisers of a model,
one training step and the validation losses. The step functions are pure-traceable (no Python
side state, no host synchronisation, no ``nnx.jit``), so a caller can wrap them in its own
``jax.jit`` over ``nnx.split((model, optimizers))``; they mutate the merged model and
optimisers in place, nnx style, and set train mode themselves.

Families:

- ``unet``: a U-Net trained as a denoising autoencoder with coarse noise (Kascenas et al.,
  MIDL 2022; :func:`coarse_noise`) or, in ``reconstruction`` mode, on plain reconstruction;
  MSE against the clean image.
- ``ae``: plain MSE reconstruction.
- ``ra``: the Reversed Autoencoder (Bercea et al., MIDL 2023), i.e. Soft-IntroVAE training with
  an added multi-scale embedding loss, with separate encoder and decoder optimisers. The loss
  pieces are the small pure functions :func:`kl_divergence`, :func:`reconstruction_error`,
  :func:`exp_elbo` and :func:`embedding_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, cast

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from imgae_dx_jax.config import AEConfig, ModelConfig, RAConfig, UNetConfig

if TYPE_CHECKING:
    from imgae_dx_jax.models.reversed_ae import ReversedAutoencoder

Metrics = dict[str, jax.Array]
Optimizers = dict[str, nnx.Optimizer]


@dataclass(frozen=True)
class Objective:
    """How one model family is trained and validated.

    Attributes:
        create_optimizers: model -> named Adam optimisers (``{"model": ...}`` for unet and ae,
            ``{"encoder": ..., "decoder": ...}`` for ra).
        train_step: (model, optimizers, batch, key) -> scalar metrics including ``"loss"``;
            one optimisation step in train mode, mutating model and optimisers in place.
        eval_losses: (model, batch, key) -> scalar metrics including ``"loss"``, the
            validation loss used to pick the best checkpoint; eval mode, no mutation.
    """

    create_optimizers: Callable[[nnx.Module], Optimizers]
    train_step: Callable[[nnx.Module, Optimizers, jax.Array, jax.Array], Metrics]
    eval_losses: Callable[[nnx.Module, jax.Array, jax.Array], Metrics]


def get_objective(cfg: ModelConfig) -> Objective:
    """Return the :class:`Objective` of the family ``cfg.name`` with its hyper-parameters bound.

    Raises:
        ValueError: for an unknown family name.
    """
    if cfg.name == "unet":
        return Objective(
            create_optimizers=partial(_single_optimizer, learning_rate=cfg.unet.learning_rate),
            train_step=partial(_unet_train_step, cfg.unet),
            eval_losses=partial(_unet_eval_losses, cfg.unet),
        )
    if cfg.name == "ae":
        return Objective(
            create_optimizers=partial(_single_optimizer, learning_rate=cfg.ae.learning_rate),
            train_step=partial(_ae_train_step, cfg.ae),
            eval_losses=partial(_ae_eval_losses, cfg.ae),
        )
    if cfg.name == "ra":
        return Objective(
            create_optimizers=partial(_ra_optimizers, learning_rate=cfg.ra.learning_rate),
            train_step=partial(_ra_train_step, cfg.ra),
            eval_losses=partial(_ra_eval_losses, cfg.ra),
        )
    raise ValueError(f"unknown model {cfg.name!r}; choose one of unet, ra, ae")


# --------------------------------------------------------------------------- shared pieces


def mse(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean squared error over all elements."""
    return jnp.mean(jnp.square(x - y))


def eval_view(model: nnx.Module) -> nnx.Module:
    """Return a view of ``model`` in eval mode (BatchNorm running averages), sharing its state.

    Unlike ``model.eval()`` this leaves the caller's module in whatever mode it was.
    """
    return nnx.view(model, use_running_average=True, raise_if_not_found=False)


def _single_optimizer(model: nnx.Module, *, learning_rate: float) -> Optimizers:
    return {"model": nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)}


def _reconstruction_step(
    model: nnx.Module, optimizer: nnx.Optimizer, inputs: jax.Array, target: jax.Array
) -> Metrics:
    """One Adam step on ``MSE(model(inputs), target)``."""
    model.train()

    def loss_fn(m: nnx.Module) -> jax.Array:
        return mse(m(inputs), target)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return {"loss": loss}


# --------------------------------------------------------------------------- unet


def coarse_noise(key: jax.Array, shape: tuple[int, ...], resolution: int, std: float) -> jax.Array:
    """Coarse Gaussian noise (Kascenas et al., MIDL 2022) of shape ``[B, H, W, C]``.

    Noise is drawn i.i.d. from N(0, std^2) on a ``resolution x resolution`` grid per image and
    channel, then upsampled bilinearly to ``H x W``. ``std`` is the standard deviation of the
    grid values; bilinear interpolation lowers the per-pixel standard deviation between grid
    points (on average to about 0.68 * std for a 16 -> 64 upsampling).
    """
    batch, height, width, channels = shape
    grid = std * jax.random.normal(key, (batch, resolution, resolution, channels))
    return jax.image.resize(grid, (batch, height, width, channels), method="bilinear")


def _unet_inputs(cfg: UNetConfig, batch: jax.Array, key: jax.Array) -> jax.Array:
    if cfg.mode == "denoising":
        return batch + coarse_noise(key, batch.shape, cfg.noise_resolution, cfg.noise_std)
    return batch


def _unet_train_step(
    cfg: UNetConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """Denoising (or plain reconstruction) MSE step; the clean image is the target."""
    return _reconstruction_step(model, optimizers["model"], _unet_inputs(cfg, batch, key), batch)


def _unet_eval_losses(
    cfg: UNetConfig, model: nnx.Module, batch: jax.Array, key: jax.Array
) -> Metrics:
    """``loss``: MSE of the training objective, with the coarse noise drawn from ``key``."""
    return {"loss": mse(eval_view(model)(_unet_inputs(cfg, batch, key)), batch)}


# --------------------------------------------------------------------------- ae


def _ae_train_step(
    cfg: AEConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """Plain reconstruction MSE step (``key`` is unused: the AE is deterministic)."""
    del cfg, key
    return _reconstruction_step(model, optimizers["model"], batch, batch)


def _ae_eval_losses(cfg: AEConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: reconstruction MSE in eval mode (``key`` is unused)."""
    del cfg, key
    return {"loss": mse(eval_view(model)(batch), batch)}


# --------------------------------------------------------------------------- ra loss pieces


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


def cosine_distance(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``1 - cosine similarity`` over the last (channel) axis; [B, h, w, C] -> [B, h, w].

    As in PyTorch, each norm is clamped to at least ``eps``.
    """
    dot = jnp.sum(a * b, axis=-1)
    norm_a = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    norm_b = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return 1.0 - dot / (norm_a * norm_b)


def embedding_loss(emb_a: Sequence[jax.Array], emb_b: Sequence[jax.Array]) -> jax.Array:
    """RA's reversed embedding loss: sum over scales of ``0.5 * MSE + mean(1 - cos sim)``.

    Args:
        emb_a: the encoder's multi-scale embeddings of the input.
        emb_b: those of its (detached) reconstruction, same shapes.
    """
    return sum(
        (
            0.5 * mse(a, b) + jnp.mean(cosine_distance(a, b))
            for a, b in zip(emb_a, emb_b, strict=True)
        ),
        start=jnp.zeros(()),
    )


# --------------------------------------------------------------------------- ra training


def _ra_optimizers(model: nnx.Module, *, learning_rate: float) -> Optimizers:
    ra = cast("ReversedAutoencoder", model)
    return {
        "encoder": nnx.Optimizer(ra.encoder, optax.adam(learning_rate), wrt=nnx.Param),
        "decoder": nnx.Optimizer(ra.decoder, optax.adam(learning_rate), wrt=nnx.Param),
    }


def _ra_train_step(
    cfg: RAConfig, model: nnx.Module, optimizers: Optimizers, batch: jax.Array, key: jax.Array
) -> Metrics:
    """One Soft-IntroVAE step with RA's embedding loss: an encoder update, then a decoder one.

    Metrics (batch means): ``loss`` = ``loss_enc + loss_dec``; ``rec`` and ``kl`` of the real
    images; ``exp_elbo_rec``/``exp_elbo_fake`` and ``emb`` of the encoder loss;
    ``kl_rec``/``kl_fake``, the KL of the re-encoded reconstructions and generated samples in
    the decoder loss.
    """
    model.train()
    ra = cast("ReversedAutoencoder", model)
    encoder, decoder = ra.encoder, ra.decoder
    scale = 1.0 / (batch.shape[1] * batch.shape[2] * batch.shape[3])
    k_prior, k_z, k_rec, k_fake, k_dec_rec, k_dec_fake = jax.random.split(key, 6)
    z_prior = jax.random.normal(k_prior, (batch.shape[0], ra.zdim), batch.dtype)

    def encoder_loss(enc: nnx.Module, dec: nnx.Module) -> tuple[jax.Array, Metrics]:
        mu, logvar, emb_x = enc(batch)
        z = reparameterize(k_z, mu, logvar)
        x_rec = dec(z)
        rec = jnp.mean(reconstruction_error(batch, x_rec))
        x_rec = jax.lax.stop_gradient(x_rec)
        fake = jax.lax.stop_gradient(dec(z_prior))
        kl = jnp.mean(kl_divergence(mu, logvar))
        mu_r, logvar_r, emb_r = enc(x_rec)
        mu_f, logvar_f, _ = enc(fake)
        rec_rec = reconstruction_error(x_rec, dec(reparameterize(k_rec, mu_r, logvar_r)))
        rec_fake = reconstruction_error(fake, dec(reparameterize(k_fake, mu_f, logvar_f)))
        elbo_rec = exp_elbo(
            rec_rec, kl_divergence(mu_r, logvar_r), scale, cfg.beta_rec, cfg.beta_neg
        )
        elbo_fake = exp_elbo(
            rec_fake, kl_divergence(mu_f, logvar_f), scale, cfg.beta_rec, cfg.beta_neg
        )
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

    (loss_enc, enc_metrics), grads = nnx.value_and_grad(encoder_loss, has_aux=True)(
        encoder, decoder
    )
    optimizers["encoder"].update(encoder, grads)
    z = jax.lax.stop_gradient(enc_metrics.pop("z"))

    def decoder_loss(dec: nnx.Module, enc: nnx.Module) -> tuple[jax.Array, Metrics]:
        x_rec = dec(z)
        fake = dec(z_prior)
        rec = jnp.mean(reconstruction_error(batch, x_rec))
        mu_r, logvar_r, _ = enc(x_rec)
        mu_f, logvar_f, _ = enc(fake)
        z_rec = jax.lax.stop_gradient(reparameterize(k_dec_rec, mu_r, logvar_r))
        z_fake = jax.lax.stop_gradient(reparameterize(k_dec_fake, mu_f, logvar_f))
        rec_rec = jnp.mean(reconstruction_error(jax.lax.stop_gradient(x_rec), dec(z_rec)))
        rec_fake = jnp.mean(reconstruction_error(jax.lax.stop_gradient(fake), dec(z_fake)))
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


def _ra_eval_losses(cfg: RAConfig, model: nnx.Module, batch: jax.Array, key: jax.Array) -> Metrics:
    """``loss``: MSE of the mean-latent reconstruction ``D(mu)``; ``kl``: mean KL (no sampling).

    ``key`` is unused: validation is deterministic.
    """
    del cfg, key
    view = cast("ReversedAutoencoder", eval_view(model))
    mu, logvar, _ = view.encoder(batch)
    return {
        "loss": mse(view.decoder(mu), batch),
        "kl": jnp.mean(kl_divergence(mu, logvar)),
    }

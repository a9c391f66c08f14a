"""PyTorch references of the U-Net, the AE and the RA, timed with the Flax models' steps.

Same layers, channels, normalisation and parameter counts as ``imgae_dx_jax.models`` (the
harness asserts the counts match): the U-Net (conv3x3-GroupNorm(8)-SiLU twice per level,
max pooling, 2x2 stride-2 transposed convolutions, concatenated skips, 1x1 head, sigmoid;
1,927,841 parameters at widths 32-64-128-256), the AE (stride-2 conv3x3-BN-ReLU encoder,
dense bottleneck, nearest x2 upsampling + conv3x3-BN-ReLU decoder, conv3x3 head, sigmoid)
and the RA (Reversed Autoencoder, ci-ber/RA's Soft-IntroVAE with residual blocks:
conv5x5-BN-LeakyReLU(0.2) and average pooling, one residual block + pooling per width, a last
residual block, a linear layer to ``2 * zdim``; the decoder mirrors it with nearest x2
upsampling, a conv5x5 head and a sigmoid; widths 32-64-128-256-256, the package default and
half the paper's, zdim 128, BatchNorm with PyTorch's defaults; 6,967,937 parameters at 64 px).

The training steps match :mod:`imgae_dx_jax.families`. U-Net and AE: Adam, MSE against the
clean image, and for the U-Net coarse noise (16x16 Gaussian grid, std 0.2, bilinear
upsampling) added to the input. RA: :mod:`imgae_dx_jax.families.ra`'s step, which is
ci-ber/RA's ``RA_Trainer`` step: an encoder Adam step, then a decoder Adam step (learning
rate 5e-5 each, the loss weights of ``model.ra`` in ``configs/default.yaml``), with the same
encoder/decoder passes and detach points, the Soft-IntroVAE losses and the reversed
multi-scale embedding loss. Where the Flax family differs from the authors' trainer, this
reference follows the Flax family, as a speed reference must: the authors encode the
detached reconstruction twice in the encoder step (once for its embeddings, once inside
``model(rec.detach())``), the Flax family once (one encoder pass fewer per step; same losses
and gradients, BatchNorm running averages updated once fewer), and it decodes the prior
sample after, not before, encoding the batch (which changes nothing but the order of those
updates). Learning rates are constant here (the Flax runs decay them with a cosine schedule,
the authors step theirs down once at epoch 100; neither costs anything measurable).

Evaluation throughput is that of each model's anomaly map in eval mode: the residual
``|x - x_hat|`` for the U-Net and the AE, and for the RA the residual of ``D(mu(x))`` (the
default map), or with ``RA_MAP = "saliency"`` that residual times the saliency of
:func:`imgae_dx_jax.families.ra.encoder_saliency` (per-scale ``1 - cosine similarity`` of the
encoder embeddings of ``x`` and ``x_hat``, bilinearly upsampled, averaged, clipped at 0,
Gaussian-smoothed with sigma 2), which stands in for the paper's LPIPS saliency and CLAHE
(see :mod:`imgae_dx_jax.families.ra`).

Torch is not a dependency of the package. Run this file with a Python that has it, either
once (``--model unet --size 64``, prints one JSON line) or as a server (``--serve``) that
``scripts/bench.py`` drives over stdin/stdout, so that PyTorch and Flax steps alternate on
the same machine state::

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python benchmarks/torch_reference.py --model unet --size 64
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("unet", "ae", "ra")
UNET_WIDTHS = (32, 64, 128, 256)
AE_WIDTHS = (32, 64, 128, 256)
# model.ra of imgae_dx_jax/configs/default.yaml (the loss weights are ci-ber/RA's).
RA_WIDTHS = (32, 64, 128, 256, 256)
RA_ZDIM = 128
RA_BETA_REC = 0.5
RA_BETA_KL = 1.0
RA_BETA_NEG = 128.0
RA_GAMMA_R = 1e-8
RA_EMBEDDING_WEIGHT = 0.005
RA_SALIENCY_SIGMA = 2.0
RA_MAP = "residual"  # model.ra.anomaly_map: residual | saliency
LEARNING_RATES = {"unet": 1e-3, "ae": 1e-3, "ra": 5e-5}


def double_conv(c_in: int, c_out: int, groups: int = 8) -> nn.Sequential:
    """Two (conv3x3 -> GroupNorm -> SiLU) layers, as ``imgae_dx_jax.models.unet.DoubleConv``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(groups, c_out),
        nn.SiLU(),
    )


class UNet(nn.Module):
    """The classic 4-level U-Net of ``imgae_dx_jax.models.unet.UNet``."""

    def __init__(self, widths: tuple[int, ...] = UNET_WIDTHS, groups: int = 8):
        super().__init__()
        self.down = nn.ModuleList(
            double_conv(c_in, c_out, groups)
            for c_in, c_out in zip((1, *widths[:-1]), widths, strict=True)
        )
        skips = widths[-2::-1]
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
            for c_in, c_out in zip(widths[:0:-1], skips, strict=True)
        )
        self.up_conv = nn.ModuleList(double_conv(2 * c, c, groups) for c in skips)
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` [B, 1, H, W]."""
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, conv in zip(self.up, self.up_conv, strict=True):
            x = conv(torch.cat([up(x), skips.pop()], dim=1))
        return torch.sigmoid(self.head(x))


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """conv3x3 -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class Autoencoder(nn.Module):
    """The AE of ``imgae_dx_jax.models.autoencoder.Autoencoder``."""

    def __init__(self, image_size: int, widths: tuple[int, ...] = AE_WIDTHS, latent: int = 16):
        super().__init__()
        self.side = image_size // 2 ** len(widths)
        self.channels = widths[-1]
        self.down = nn.Sequential(
            *(
                conv_bn_relu(c_in, c_out, 2)
                for c_in, c_out in zip((1, *widths[:-1]), widths, strict=True)
            )
        )
        flat = widths[-1] * self.side * self.side
        self.to_latent = nn.Linear(flat, latent)
        self.from_latent = nn.Linear(latent, flat)
        up_widths = (*widths[-2::-1], widths[0])
        self.up = nn.ModuleList(
            conv_bn_relu(c_in, c_out) for c_in, c_out in zip(widths[::-1], up_widths, strict=True)
        )
        self.head = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` [B, 1, H, W]."""
        z = self.to_latent(self.down(x).flatten(1))
        h = F.relu(self.from_latent(z)).view(-1, self.channels, self.side, self.side)
        for layer in self.up:
            h = layer(F.interpolate(h, scale_factor=2, mode="nearest"))
        return torch.sigmoid(self.head(h))


class ResidualBlock(nn.Module):
    """Soft-IntroVAE residual block of ``imgae_dx_jax.models.layers.ResidualBlock``.

    conv3x3-BN-LeakyReLU(0.2)-conv3x3-BN (no biases), plus the identity or a bias-free 1x1
    convolution when the channel count changes, then LeakyReLU(0.2) (in place, as ci-ber/RA).
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.expand = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else None
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x`` [B, C_in, H, W]."""
        identity = x if self.expand is None else self.expand(x)
        y = F.leaky_relu(self.bn1(self.conv1(x)), 0.2, inplace=True)
        return F.leaky_relu(self.bn2(self.conv2(y)) + identity, 0.2, inplace=True)


class RAEncoder(nn.Module):
    """``imgae_dx_jax.models.reversed_ae.RAEncoder``: image -> (mu, logvar, embeddings)."""

    def __init__(self, image_size: int, widths: tuple[int, ...], zdim: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 5, padding=2, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.LeakyReLU(0.2),
        )
        self.blocks = nn.ModuleList(ResidualBlock(a, b) for a, b in itertools.pairwise(widths))
        self.last = ResidualBlock(widths[-1], widths[-1])
        side = image_size // 2 ** len(widths)
        self.fc = nn.Linear(widths[-1] * side * side, 2 * zdim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``mu``, ``logvar`` [B, zdim] and the activations after each of the poolings."""
        h = F.avg_pool2d(self.stem(x), 2)
        embeddings = [h]
        for block in self.blocks:
            h = F.avg_pool2d(block(h), 2)
            embeddings.append(h)
        mu, logvar = self.fc(self.last(h).flatten(1)).chunk(2, dim=1)
        return mu, logvar, embeddings


class RADecoder(nn.Module):
    """``imgae_dx_jax.models.reversed_ae.RADecoder``: latent [B, zdim] -> image in [0, 1]."""

    def __init__(self, image_size: int, widths: tuple[int, ...], zdim: int):
        super().__init__()
        self.side = image_size // 2 ** len(widths)
        self.channels = widths[-1]
        self.fc = nn.Linear(zdim, widths[-1] * self.side * self.side)
        reversed_widths = widths[::-1]
        self.blocks = nn.ModuleList(
            ResidualBlock(a, b)
            for a, b in zip((widths[-1], *reversed_widths[:-1]), reversed_widths, strict=True)
        )
        self.last = ResidualBlock(widths[0], widths[0])
        self.head = nn.Conv2d(widths[0], 1, 5, padding=2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``z`` [B, zdim] to an image [B, 1, H, W]."""
        h = F.relu(self.fc(z), inplace=True).view(-1, self.channels, self.side, self.side)
        for block in self.blocks:
            h = F.interpolate(block(h), scale_factor=2, mode="nearest")
        return torch.sigmoid(self.head(self.last(h)))


class RA(nn.Module):
    """``imgae_dx_jax.models.reversed_ae.ReversedAutoencoder``: encoder and decoder.

    Trained and used through them (:func:`ra_step`, :func:`anomaly_map`), as the Flax family.
    """

    def __init__(self, image_size: int, widths: tuple[int, ...] = RA_WIDTHS, zdim: int = RA_ZDIM):
        super().__init__()
        self.zdim = zdim
        self.encoder = RAEncoder(image_size, widths, zdim)
        self.decoder = RADecoder(image_size, widths, zdim)


def build(model: str, size: int) -> nn.Module:
    """The reference model ``unet``, ``ae`` or ``ra`` for ``size`` x ``size`` images."""
    if model == "unet":
        return UNet()
    if model == "ae":
        return Autoencoder(size)
    if model == "ra":
        return RA(size)
    raise ValueError(f"no PyTorch reference for {model!r} (only {', '.join(MODELS)})")


def optimizers(name: str, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
    """Adam at the model's learning rate: separate ones for the RA's encoder and decoder."""
    lr = LEARNING_RATES[name]
    if isinstance(model, RA):
        return {
            "encoder": torch.optim.Adam(model.encoder.parameters(), lr=lr),
            "decoder": torch.optim.Adam(model.decoder.parameters(), lr=lr),
        }
    return {"model": torch.optim.Adam(model.parameters(), lr=lr)}


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Back-propagate ``loss`` and step ``optimizer``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


# --------------------------------------------------------------------------- RA step


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mu, exp(logvar)) || N(0, I)): [B]."""
    return -0.5 * torch.sum(1.0 + logvar - mu.square() - logvar.exp(), dim=1)


def reconstruction_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-image sum of squared errors: [B]."""
    return (x - x_hat).square().flatten(1).sum(1)


def exp_elbo(rec: torch.Tensor, kl: torch.Tensor, scale: float) -> torch.Tensor:
    """Soft-IntroVAE's batch mean of ``exp(-2 * scale * (beta_rec * rec + beta_neg * kl))``."""
    return torch.exp(-2.0 * scale * (RA_BETA_REC * rec + RA_BETA_NEG * kl)).mean()


def embedding_loss(emb_a: list[torch.Tensor], emb_b: list[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of ``0.5 * MSE + mean(1 - cosine similarity of flattened embeddings)``."""
    return sum(
        (
            0.5 * F.mse_loss(a, b) + (1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1))).mean()
            for a, b in zip(emb_a, emb_b, strict=True)
        ),
        start=torch.zeros(()),
    )


def ra_step(model: RA, optims: dict[str, torch.optim.Optimizer], x: torch.Tensor) -> torch.Tensor:
    """One step of ``imgae_dx_jax.families.ra.train_step``: encoder update, then decoder update.

    As in ci-ber/RA's trainer, the other network's parameters are frozen during each update.
    Returns ``loss_enc + loss_dec`` (detached).
    """
    encoder, decoder = model.encoder, model.decoder
    scale = 1.0 / x[0].numel()
    z_prior = torch.randn(x.shape[0], model.zdim)

    encoder.requires_grad_(True)
    decoder.requires_grad_(False)
    mu, logvar, emb_x = encoder(x)
    z = reparameterize(mu, logvar)
    x_rec = decoder(z)
    rec = reconstruction_error(x, x_rec).mean()
    fake = decoder(z_prior)  # no path to the encoder's parameters
    kl = kl_divergence(mu, logvar).mean()
    mu_r, logvar_r, emb_r = encoder(x_rec.detach())
    mu_f, logvar_f, _ = encoder(fake)
    # x_rec stays attached as the target of its re-reconstruction (as the authors' trainer).
    rec_rec = reconstruction_error(x_rec, decoder(reparameterize(mu_r, logvar_r)))
    rec_fake = reconstruction_error(fake, decoder(reparameterize(mu_f, logvar_f)))
    elbo_rec = exp_elbo(rec_rec, kl_divergence(mu_r, logvar_r), scale)
    elbo_fake = exp_elbo(rec_fake, kl_divergence(mu_f, logvar_f), scale)
    loss_enc = (
        scale * (RA_BETA_REC * rec + RA_BETA_KL * kl)
        + 0.25 * (elbo_rec + elbo_fake)
        + RA_EMBEDDING_WEIGHT * embedding_loss(emb_x, emb_r)
    )
    optimizer_step(optims["encoder"], loss_enc)

    encoder.requires_grad_(False)
    decoder.requires_grad_(True)
    x_rec = decoder(z.detach())
    fake = decoder(z_prior)
    rec = reconstruction_error(x, x_rec).mean()
    mu_r, logvar_r, _ = encoder(x_rec)
    mu_f, logvar_f, _ = encoder(fake)
    z_rec = reparameterize(mu_r, logvar_r).detach()
    z_fake = reparameterize(mu_f, logvar_f).detach()
    rec_rec = reconstruction_error(x_rec.detach(), decoder(z_rec)).mean()
    rec_fake = reconstruction_error(fake.detach(), decoder(z_fake)).mean()
    kl_rec = kl_divergence(mu_r, logvar_r).mean()
    kl_fake = kl_divergence(mu_f, logvar_f).mean()
    loss_dec = scale * (
        RA_BETA_REC * rec
        + 0.5 * RA_BETA_KL * (kl_rec + kl_fake)
        + RA_GAMMA_R * 0.5 * RA_BETA_REC * (rec_rec + rec_fake)
    )
    optimizer_step(optims["decoder"], loss_dec)
    return loss_enc.detach() + loss_dec.detach()


# --------------------------------------------------------------------------- anomaly maps


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth [B, 1, H, W] maps with ``imgae_dx_jax.families.losses.gaussian_blur``'s kernel.

    Separable, truncated at 4 sigma; borders extended by SciPy's ``reflect`` (edge repeated).
    """
    radius = int(4.0 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma).square())
    kernel = kernel / kernel.sum()
    x = maps
    for dim in (-2, -1):
        head = x.narrow(dim, 0, radius).flip(dim)
        tail = x.narrow(dim, x.shape[dim] - radius, radius).flip(dim)
        x = torch.cat([head, x, tail], dim=dim)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return F.conv2d(x, kernel.view(1, 1, 1, -1))


def anomaly_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's anomaly map of ``x`` [B, 1, H, W] (as ``imgae_dx_jax.families``): [B, 1, H, W].

    The residual ``|x - x_hat|``; for the RA, that of ``D(mu(x))``, times the encoder
    saliency of :func:`imgae_dx_jax.families.ra.encoder_saliency` if :data:`RA_MAP` is
    ``saliency``.
    """
    if not isinstance(model, RA):
        return (x - model(x)).abs()
    mu, _, emb_x = model.encoder(x)
    x_hat = model.decoder(mu)
    if RA_MAP == "residual":
        return (x - x_hat).abs()
    _, _, emb_hat = model.encoder(x_hat)
    maps = [
        F.interpolate(
            (1.0 - F.cosine_similarity(a, b, dim=1)).unsqueeze(1),
            size=x.shape[-2:],
            mode="bilinear",
        )
        for a, b in zip(emb_x, emb_hat, strict=True)
    ]
    saliency = gaussian_blur(torch.clamp(sum(maps) / len(maps), min=0.0), RA_SALIENCY_SIGMA)
    return (x - x_hat).abs() * saliency


def n_params(module: nn.Module) -> int:
    """Number of parameters (all trained; the RA step toggles ``requires_grad`` as it goes)."""
    return sum(p.numel() for p in module.parameters())


class Bench:
    """One model with its Adam optimiser(s) and a fixed batch; times training steps."""

    def __init__(self, model: str, size: int, batch: int, eval_batch: int = 64):
        torch.manual_seed(0)
        self.name, self.size, self.batch, self.eval_batch = model, size, batch, eval_batch
        self.model = build(model, size)
        self.optimizers = optimizers(model, self.model)
        self.images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)

    def step(self) -> float:
        """One training step; returns its wall time in seconds."""
        start = time.perf_counter()
        self.model.train()
        x = self.images.float() / 255.0
        if isinstance(self.model, RA):
            loss = ra_step(self.model, self.optimizers, x)
        else:
            inputs = x
            if self.name == "unet":
                grid = 0.2 * torch.randn(x.shape[0], 1, 16, 16)
                inputs = x + F.interpolate(grid, size=x.shape[-2:], mode="bilinear")
            loss = F.mse_loss(self.model(inputs), x)
            optimizer_step(self.optimizers["model"], loss)
        loss.item()
        return time.perf_counter() - start

    def eval_rate(self, repeats: int = 3) -> float:
        """Images/s of eval-mode anomaly maps (:func:`anomaly_map`) at the eval batch size."""
        self.model.eval()
        x = torch.rand(self.eval_batch, 1, self.size, self.size)
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 1):
                start = time.perf_counter()
                anomaly_map(self.model, x).mean(dim=(1, 2, 3)).sum().item()
                times.append(time.perf_counter() - start)
        return self.eval_batch / statistics.median(times[1:])


def time_conv(cmd: dict) -> list[float]:
    """Seconds of ``cmd["n"]`` runs of one convolution's forward pass and gradients.

    ``cmd``: ``input`` [N, C, H, W], ``kernel`` [O, C, kH, kW], ``stride`` [sH, sW],
    ``padding`` [[top, bottom], [left, right]], ``input_grad`` (also the input's gradient);
    the loss is ``sum(y ** 2)``, as ``scripts/bench_convs.py`` times it in Flax.
    """
    torch.manual_seed(0)
    x = torch.randn(*cmd["input"], requires_grad=cmd["input_grad"])
    w = (0.1 * torch.randn(*cmd["kernel"])).requires_grad_()
    (top, bottom), (left, right) = cmd["padding"]
    symmetric = top == bottom and left == right

    def run() -> float:
        start = time.perf_counter()
        inputs = x if symmetric else F.pad(x, (left, right, top, bottom))
        y = F.conv2d(inputs, w, stride=cmd["stride"], padding=(top, left) if symmetric else 0)
        (y**2).sum().backward()
        x.grad = w.grad = None
        return time.perf_counter() - start

    return [run() for _ in range(cmd["n"])]


def info() -> dict:
    """Versions and threads of this PyTorch."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def serve() -> None:
    """Answer JSON commands, one per line on stdin, with one JSON line each on stdout.

    ``{"cmd": "init", "model": m, "size": s, "batch": b}`` -> ``{"params": n, ...}``;
    ``{"cmd": "steps", "n": k}`` -> ``{"times": [...]}``; ``{"cmd": "eval"}`` ->
    ``{"images_per_s": r}``; ``{"cmd": "conv", ...}`` (:func:`time_conv`) -> ``{"times":
    [...]}``; ``{"cmd": "quit"}`` ends.
    """
    bench: Bench | None = None
    print(json.dumps(info()), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "init":
            bench = Bench(cmd["model"], cmd["size"], cmd["batch"], cmd.get("eval_batch", 64))
            out = {"params": n_params(bench.model)}
        elif cmd["cmd"] == "steps":
            assert bench is not None
            out = {"times": [bench.step() for _ in range(cmd["n"])]}
        elif cmd["cmd"] == "conv":
            out = {"times": time_conv(cmd)}
        elif cmd["cmd"] == "eval":
            assert bench is not None
            out = {"images_per_s": bench.eval_rate()}
        else:
            out = {"error": f"unknown command {cmd['cmd']!r}"}
        print(json.dumps(out), flush=True)


def main() -> None:
    """Time one model (or serve commands with ``--serve``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="unet")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help="answer JSON commands on stdin")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    bench = Bench(args.model, args.size, args.batch)
    for _ in range(args.warmup):
        bench.step()
    times = [bench.step() for _ in range(args.steps)]
    step = statistics.median(times)
    print(
        json.dumps(
            {
                **info(),
                "model": args.model,
                "size": args.size,
                "params": n_params(bench.model),
                "step_s": step,
                "images_per_s": args.batch / step,
                "eval_images_per_s": bench.eval_rate(),
            }
        )
    )


if __name__ == "__main__":
    main()

"""PyTorch references of the U-Net and the AE, timed with the same step as the Flax models.

Same layers, channels, normalisation and parameter counts as ``imgae_dx_jax.models`` (the
harness asserts the counts match): the U-Net (conv3x3-GroupNorm(8)-SiLU twice per level,
max pooling, 2x2 stride-2 transposed convolutions, concatenated skips, 1x1 head, sigmoid;
1,927,841 parameters at widths 32-64-128-256) and the AE (stride-2 conv3x3-BN-ReLU encoder,
dense bottleneck, nearest x2 upsampling + conv3x3-BN-ReLU decoder, conv3x3 head, sigmoid).
The training step matches :mod:`imgae_dx_jax.objectives`: Adam, MSE against the clean image,
and for the U-Net coarse noise (16x16 Gaussian grid, std 0.2, bilinear upsampling) added to
the input.

Torch is not a dependency of the package. Run this file with a Python that has it, either
once (``--model unet --size 64``, prints one JSON line) or as a server (``--serve``) that
``scripts/bench.py`` drives over stdin/stdout, so that PyTorch and Flax steps alternate on
the same machine state::

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python benchmarks/torch_reference.py --model unet --size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

UNET_WIDTHS = (32, 64, 128, 256)
AE_WIDTHS = (32, 64, 128, 256)


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


def build(model: str, size: int) -> nn.Module:
    """The reference model ``unet`` or ``ae`` for ``size`` x ``size`` images."""
    if model == "unet":
        return UNet()
    if model == "ae":
        return Autoencoder(size)
    raise ValueError(f"no PyTorch reference for {model!r} (only unet and ae)")


def n_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class Bench:
    """One model with its Adam optimiser and a fixed batch; times training steps."""

    def __init__(self, model: str, size: int, batch: int, eval_batch: int = 64):
        torch.manual_seed(0)
        self.name, self.size, self.batch, self.eval_batch = model, size, batch, eval_batch
        self.model = build(model, size)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.images = torch.randint(0, 256, (batch, 1, size, size), dtype=torch.uint8)

    def step(self) -> float:
        """One training step; returns its wall time in seconds."""
        start = time.perf_counter()
        self.model.train()
        x = self.images.float() / 255.0
        inputs = x
        if self.name == "unet":
            grid = 0.2 * torch.randn(x.shape[0], 1, 16, 16)
            inputs = x + F.interpolate(grid, size=x.shape[-2:], mode="bilinear")
        loss = F.mse_loss(self.model(inputs), x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        loss.detach().item()
        return time.perf_counter() - start

    def eval_rate(self, repeats: int = 3) -> float:
        """Images/s of eval-mode reconstruction + residual map at the eval batch size."""
        self.model.eval()
        x = torch.rand(self.eval_batch, 1, self.size, self.size)
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 1):
                start = time.perf_counter()
                (x - self.model(x)).abs().mean(dim=(1, 2, 3)).sum().item()
                times.append(time.perf_counter() - start)
        return self.eval_batch / statistics.median(times[1:])


def info() -> dict:
    """Versions and threads of this PyTorch."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}


def serve() -> None:
    """Answer JSON commands, one per line on stdin, with one JSON line each on stdout.

    ``{"cmd": "init", "model": m, "size": s, "batch": b}`` -> ``{"params": n, ...}``;
    ``{"cmd": "steps", "n": k}`` -> ``{"times": [...]}``; ``{"cmd": "eval"}`` ->
    ``{"images_per_s": r}``; ``{"cmd": "quit"}`` ends.
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
        elif cmd["cmd"] == "eval":
            assert bench is not None
            out = {"images_per_s": bench.eval_rate()}
        else:
            out = {"error": f"unknown command {cmd['cmd']!r}"}
        print(json.dumps(out), flush=True)


def main() -> None:
    """Time one model (or serve commands with ``--serve``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("unet", "ae"), default="unet")
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

"""Where a model's train step loses to PyTorch: each of its convolutions timed alone.

    hatch run bench-convs [--models unet] [--size 64] [--batch 16]
                          [--torch-python /tmp/torchenv/bin/python] [--out bench/convs.json]

The convolutions are read from the model itself: the forward pass of the training step's
model (``model.fast_path`` on, as ``hatch run bench`` times it) is traced at ``--size`` and
every ``conv_general_dilated`` in it is kept with its exact shapes, strides and padding
(transposed convolutions, which the fast path turns into matrix multiplies, are left out).
Each distinct convolution is timed as a training step needs it: the forward pass and the
gradients of ``sum(y ** 2)`` with respect to the kernel and, unless its input is the image
(one input channel), the input. The Flax side jits exactly that with ``jax.lax``; the PyTorch
side (``benchmarks/torch_reference.py --serve``, once per ``--torch-threads`` setting) runs
``conv2d`` and ``backward`` on the same shapes in NCHW, interleaved with the Flax timings in
each round. Reported per convolution: its count in the model, the median time of each, and
the ratio against PyTorch's fastest thread setting; then the sum over the model weighted by
the counts. The load average is recorded per round, and no ratio is printed where it
exceeded the number of cores (as in ``hatch run bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # the PyTorch server and the idle rule of the main benchmark

ROOT = bench.ROOT

Conv = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[tuple[int, int], ...]]
"""A convolution: input shape (NHWC), kernel shape (HWIO), strides, padding per spatial dim."""


def model_convolutions(model: str, size: int, batch: int) -> Counter[Conv]:
    """Every convolution of ``model``'s training forward pass at ``size``, with its count.

    Traced with :func:`jax.make_jaxpr` through nested jaxprs; convolutions with input
    dilation (transposed) or feature groups are left out.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.extend.core import subjaxprs

    from imgae_dx_jax.config import load_config
    from imgae_dx_jax.families import create_model

    config = load_config(
        overrides=[f"model.name={model}", f"data.image_size={size}", "model.fast_path=always"]
    )
    net = create_model(config.model, size, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)

    def forward(state: Any, x: jax.Array) -> Any:
        return nnx.merge(graphdef, state)(x)

    images = jax.ShapeDtypeStruct((batch, size, size, 1), jnp.float32)
    found: Counter[Conv] = Counter()

    def visit(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                p = eqn.params
                lhs, rhs = (tuple(v.aval.shape) for v in eqn.invars)
                dims = p["dimension_numbers"]
                plain = set(p["lhs_dilation"]) == {1} and set(p["rhs_dilation"]) == {1}
                if plain and p["feature_group_count"] == 1 and p["batch_group_count"] == 1:
                    if (dims.lhs_spec, dims.rhs_spec) != ((0, 3, 1, 2), (3, 2, 0, 1)):
                        raise ValueError(f"not an NHWC/HWIO convolution: {dims}")
                    padding = tuple(tuple(int(v) for v in pad) for pad in p["padding"])
                    found[(lhs, rhs, tuple(p["window_strides"]), padding)] += 1
        for sub in subjaxprs(jaxpr):  # those of pjit, custom_vjp, ... (each eqn's, once)
            visit(sub)

    visit(jax.make_jaxpr(forward)(state, images).jaxpr)
    return found


def flax_timer(conv: Conv) -> Any:
    """A function that runs ``conv``'s forward and gradients once and returns its seconds."""
    import jax
    import jax.numpy as jnp

    lhs, rhs, strides, padding = conv
    x = jax.random.normal(jax.random.key(0), lhs)
    w = 0.1 * jax.random.normal(jax.random.key(1), rhs)

    def loss(x: jax.Array, w: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y**2)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1) if input_gradient(conv) else 1))
    for _ in range(2):
        jax.block_until_ready(grads(x, w))

    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(grads(x, w))
        return time.perf_counter() - start

    return run


def input_gradient(conv: Conv) -> bool:
    """Whether a training step needs the input gradient: not for the image (one channel)."""
    return conv[0][3] != 1


def torch_command(conv: Conv, n: int) -> dict[str, Any]:
    """The reference server's ``conv`` command for ``conv``: NCHW shapes, ``n`` timed runs."""
    lhs, rhs, strides, padding = conv
    return {
        "cmd": "conv",
        "input": [lhs[0], lhs[3], lhs[1], lhs[2]],
        "kernel": [rhs[3], rhs[2], rhs[0], rhs[1]],
        "stride": list(strides),
        "padding": [list(p) for p in padding],
        "input_grad": input_gradient(conv),
        "n": n,
    }


def describe(conv: Conv) -> str:
    """``16x64x64 1->32 3x3 s1``: batch x height x width, channels, kernel, stride.

    Uneven padding (the sub-pixel convolutions of the fast path) is added as
    ``pad top-bottom,left-right``.
    """
    lhs, rhs, strides, padding = conv
    stride = "x".join(map(str, sorted(set(strides))))
    text = f"{lhs[0]}x{lhs[1]}x{lhs[2]} {lhs[3]}->{rhs[3]} {rhs[0]}x{rhs[1]} s{stride}"
    if any(lo != hi for lo, hi in padding):
        text += " pad " + ",".join(f"{lo}-{hi}" for lo, hi in padding)
    return text


def measure(model: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time every distinct convolution of ``model``, Flax and PyTorch interleaved."""
    convs = model_convolutions(model, args.size, args.batch)
    timers = {conv: flax_timer(conv) for conv in convs}
    servers = [bench.TorchServer(args.torch_python, t or None) for t in args.torch_threads]
    for server in servers:
        for conv in convs:
            server.ask(**torch_command(conv, 2))  # warm-up
    times: dict[Conv, dict[str, list[float]]] = {c: {"flax": []} for c in convs}
    loads = []
    for _ in range(args.rounds):
        before = os.getloadavg()[0]
        for conv, run in timers.items():
            times[conv]["flax"] += [run() for _ in range(args.runs_per_round)]
            for server in servers:
                answer = server.ask(**torch_command(conv, args.runs_per_round))
                times[conv].setdefault(f"threads={server.info['threads']}", []).extend(
                    answer["times"]
                )
        loads.append([before, os.getloadavg()[0]])
    torch_version = servers[0].info["torch"]
    for server in servers:
        server.close()
    rows = []
    for conv, count in convs.items():
        medians = {name: statistics.median(ts) for name, ts in times[conv].items()}
        torch_best = min(v for k, v in medians.items() if k != "flax")
        rows.append(
            {
                "conv": describe(conv),
                "count": count,
                "input_grad": input_gradient(conv),
                "seconds": medians,
                "torch_best_s": torch_best,
                "ratio": medians["flax"] / torch_best,
            }
        )
    flax_total = sum(r["count"] * r["seconds"]["flax"] for r in rows)
    torch_total = sum(r["count"] * r["torch_best_s"] for r in rows)
    return {
        "model": model,
        "size": args.size,
        "batch": args.batch,
        "torch": torch_version,
        "rows": rows,
        "flax_total_s": flax_total,
        "torch_total_s": torch_total,
        "ratio": flax_total / torch_total,
        "load_per_round": loads,
        "idle": bench.machine_was_idle(loads),
    }


def table(result: dict[str, Any]) -> str:
    """Markdown table of one model's convolutions."""
    rows = [
        "| convolution (forward + gradients) | count | Flax ms | PyTorch ms | Flax/PyTorch |",
        "|---|---|---|---|---|",
    ]
    idle = result["idle"]
    for r in result["rows"]:
        ratio = f"{r['ratio']:.2f}x" if idle else "not reported (load)"
        rows.append(
            f"| {r['conv']}{'' if r['input_grad'] else ' (no input gradient)'} | {r['count']} "
            f"| {1e3 * r['seconds']['flax']:.1f} | {1e3 * r['torch_best_s']:.1f} | {ratio} |"
        )
    total = f"{result['ratio']:.2f}x" if idle else "not reported (load)"
    rows.append(
        f"| all, weighted by count | {sum(r['count'] for r in result['rows'])} "
        f"| {1e3 * result['flax_total_s']:.0f} | {1e3 * result['torch_total_s']:.0f} | {total} |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=bench.TORCH_MODELS, default=["unet"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs-per-round", type=int, default=5)
    parser.add_argument("--torch-python", help="a Python with torch (as for hatch run bench)")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "convs.json")
    args = parser.parse_args(argv)
    args.torch_python = bench.find_torch_python(args.torch_python)
    if args.torch_python is None:
        parser.error("no Python with torch found: give --torch-python (see torch_reference.py)")
    import jax

    results = {
        "machine": {
            "platform": platform.platform(),
            "cpu": bench.cpu_model(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "load_average": os.getloadavg(),
        },
        "models": [measure(model, args) for model in args.models],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for result in results["models"]:
        print(f"\n{result['model']}, {result['size']} px, batch {result['batch']}:\n")
        print(table(result))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

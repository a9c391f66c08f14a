"""Benchmark harness (``hatch run bench``): training and evaluation speed of every model,
the data path and the README's train command; prints a table, writes ``bench/results.json``.

    hatch run bench [--quick] [--models unet ra ae] [--sizes 64 128]
                    [--torch-python /tmp/torchenv/bin/python] [--out bench/results.json]

Per model and image size, in a fresh process each (so that peak RSS is per model): the train
step of :func:`imgae_dx_jax.training.step.build_trainer` (the real jitted, donated, sharded
step) with ``model.fast_path`` on (``always``) and off (``never``), its first-step time (trace +
compile + run), the median of >= 7 steps after warm-up and images/s; eval images/s of the
evaluation's anomaly maps; peak host RSS; device memory on a GPU/TPU. For each model of
``TORCH_MODELS`` (the U-Net, the RA and the AE) the PyTorch reference
(``benchmarks/torch_reference.py``, run by ``--torch-python`` as a server in a subprocess, once
per ``--torch-threads`` setting) is timed in the same rounds, interleaved with the Flax steps,
so that the ratio is taken on the same machine state, against its fastest thread setting; its
parameter count must equal the Flax one.
The load average is recorded before and after every round; where it exceeded the number of
cores the table prints no ratio (the figures stay in the JSON, with ``idle: false``).
Then the data figures of ``scripts/bench_data.py`` and the wall time and peak RSS of
``python -m imgae_dx_jax.train --stage images_001`` (temporary run and cache directories),
with the peak RSS of each of its phases (its ``memory:`` log lines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TORCH_REFERENCE = ROOT / "benchmarks" / "torch_reference.py"
TORCH_MODELS = ("unet", "ra", "ae")
PATHS = {"fast": "always", "plain": "never"}


# --------------------------------------------------------------------------- torch


def find_torch_python(requested: str | None) -> str | None:
    """A Python that can import torch: ``requested``, this one, or ``/tmp/torchenv``."""
    candidates = [requested] if requested else [sys.executable, "/tmp/torchenv/bin/python"]
    for python in candidates:
        if python and (shutil.which(python) or Path(python).is_file()):
            ok = subprocess.run(
                [python, "-c", "import torch"], capture_output=True, check=False
            ).returncode
            if ok == 0:
                return python
    return None


class TorchServer:
    """``benchmarks/torch_reference.py --serve`` in a subprocess, one JSON line per command."""

    def __init__(self, python: str, threads: int | None) -> None:
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(
            [python, "-W", "ignore", str(TORCH_REFERENCE), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch reference server died")
        return json.loads(line)

    def ask(self, **cmd: Any) -> dict[str, Any]:
        """Send one command, return its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Stop the server."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- one model (child)


def measure_model(model: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Child process: time the Flax step (fast and plain paths) and the PyTorch reference."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from imgae_dx_jax import distributed
    from imgae_dx_jax.config import load_config
    from imgae_dx_jax.families import anomaly_maps
    from imgae_dx_jax.training.step import build_trainer

    rng = np.random.default_rng(0)
    mesh = distributed.make_mesh()
    batch_sharding = distributed.batch_sharding(mesh)
    result: dict[str, Any] = {
        "model": model,
        "size": size,
        "batch": args.batch,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }
    flax = {}
    for label in args.paths:
        config = load_config(
            overrides=[
                f"model.name={model}",
                f"data.image_size={size}",
                f"train.batch_size={args.batch}",
                f"model.fast_path={PATHS[label]}",
                # The PyTorch reference is the plain AE (MSE, one output channel) and the
                # U-Net with the coarse noise alone.
                *(["model.ae.uncertainty=false"] if model == "ae" else []),
                *(["model.unet.noise=coarse"] if model == "unet" else []),
            ]
        )
        # Throughput only: the step budget shapes nothing but a cosine schedule's length.
        trainer = build_trainer(config, mesh, total_steps=1000)
        images = jax.device_put(
            rng.integers(0, 256, (args.batch, size, size, 1), dtype=np.uint8), batch_sharding
        )
        step = [0]

        def run_step(trainer: Any = trainer, images: Any = images, step: list = step) -> float:
            start = time.perf_counter()
            trainer.state, metrics = trainer.train_step(trainer.state, images, np.uint32(step[0]))
            jax.block_until_ready(metrics)
            step[0] += 1
            return time.perf_counter() - start

        first = run_step()
        run_step()  # warm-up
        model_obj, _ = trainer.model_and_optimizers()
        params = sum(x.size for x in jax.tree.leaves(nnx.state(model_obj, nnx.Param)))
        flax[label] = {"run": run_step, "times": [], "first_step_s": first, "params": params}
        flax[label]["eval"] = (config, trainer)
    servers: dict[str, TorchServer] = {}
    if args.torch_python and model in TORCH_MODELS:
        for threads in args.torch_threads:
            server = TorchServer(args.torch_python, threads or None)
            torch_params = server.ask(
                cmd="init", model=model, size=size, batch=args.batch, eval_batch=args.eval_batch
            )["params"]
            check_param_counts(model, torch_params, flax)
            server.ask(cmd="steps", n=2)  # warm-up
            name = f"threads={server.info['threads']}"
            servers[name] = server
        result["torch"] = {
            name: {**server.info, "params": torch_params, "times": []}
            for name, server in servers.items()
        }
    # Interleaved rounds: every implementation runs a few steps in turn. The 1-minute load
    # average is read before and after each round: a ratio taken while other work competed
    # for the cores is not reported as one (see :func:`machine_was_idle`).
    result["load_per_round"] = []
    for _ in range(args.rounds):
        before = os.getloadavg()[0]
        for entry in flax.values():
            entry["times"] += [entry["run"]() for _ in range(args.steps_per_round)]
        for name, server in servers.items():
            answer = server.ask(cmd="steps", n=args.steps_per_round)
            result["torch"][name]["times"] += answer["times"]
        result["load_per_round"].append([before, os.getloadavg()[0]])
    result["idle"] = machine_was_idle(result["load_per_round"])
    for label, entry in flax.items():
        config, trainer = entry.pop("eval")
        entry.pop("run")
        step_s = statistics.median(entry["times"])
        entry.update(step_s=step_s, images_per_s=args.batch / step_s)
        entry["eval_images_per_s"] = eval_rate(config, trainer, args.eval_batch, anomaly_maps)
        result[label] = entry
    if servers:
        for name, server in servers.items():
            torch = result["torch"][name]
            torch["step_s"] = statistics.median(torch["times"])
            torch["images_per_s"] = args.batch / torch["step_s"]
            torch["eval_images_per_s"] = server.ask(cmd="eval")["images_per_s"]
            server.close()
        # The ratio is taken against the fastest PyTorch thread setting.
        best = min(result["torch"].values(), key=lambda t: t["step_s"])
        result["torch_best"] = {"threads": best["threads"], "step_s": best["step_s"]}
        for label in flax:
            result[label]["torch_ratio"] = result[label]["step_s"] / best["step_s"]
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats = jax.local_devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    result["device_peak_mb"] = stats.get("peak_bytes_in_use", 0) / 2**20 if stats else None
    del jnp
    return result


def check_param_counts(model: str, torch_params: int, flax: dict[str, dict[str, Any]]) -> None:
    """Refuse a PyTorch reference whose parameter count differs from a Flax path's.

    Args:
        model: the model name (for the message).
        torch_params: the reference's parameter count.
        flax: per Flax path (``fast``, ``plain``), its entry with ``params``.

    Raises:
        AssertionError: naming both counts, if any path's count differs.
    """
    for label, entry in flax.items():
        if torch_params != entry["params"]:
            raise AssertionError(
                f"{model}: PyTorch reference has {torch_params} parameters, "
                f"Flax ({label}) {entry['params']}"
            )


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what platform reports.

    Machines of one platform string differ in speed and in how they round, so every benchmark
    records it beside its figures.
    """
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_was_idle(loads: list[list[float]], cpus: int | None = None) -> bool:
    """Whether every round ran with a load average at or below the number of cores.

    The benchmark itself keeps up to one process busy per thread it uses, so a load above the
    core count means other work was competing for them and the timings (and any Flax/PyTorch
    ratio) are not those of an idle machine.
    """
    limit = cpus or os.cpu_count() or 1
    return all(load <= limit for pair in loads for load in pair)


def eval_rate(config: Any, trainer: Any, batch: int, anomaly_maps: Any) -> float:
    """Images/s of the evaluation's anomaly maps (eval mode) at ``batch`` images per call."""
    import jax
    import numpy as np
    from flax import nnx

    graphdef, state = trainer.graphdef, trainer.state

    @jax.jit
    def maps(state: Any, x: Any) -> Any:
        model, _ = nnx.merge(graphdef, state)
        return anomaly_maps(model, x, config.model)[1]

    size = config.data.image_size
    x = jax.numpy.asarray(np.random.default_rng(1).random((batch, size, size, 1), np.float32))
    jax.block_until_ready(maps(state, x))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(maps(state, x))
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def run_child(model: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one model and size in a fresh process."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        model,
        str(size),
        "--batch",
        str(args.batch),
        "--eval-batch",
        str(args.eval_batch),
        "--rounds",
        str(args.rounds),
        "--steps-per-round",
        str(args.steps_per_round),
        "--paths",
        *args.paths,
    ]
    if args.torch_python:
        cmd += ["--torch-python", args.torch_python]
    cmd += ["--torch-threads", *map(str, args.torch_threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        return {"model": model, "size": size, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- data and CLI


def data_figures(quick: bool, sizes: list[int], threads: int) -> dict[str, Any]:
    """The figures of ``scripts/bench_data.py`` (smaller archive with ``quick``)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_data

    n_big = 2_000 if quick else 10_000
    figures: dict[str, Any] = {"archive_images": n_big, "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        big, small = work / "big.zip", work / "small.zip"
        bench_data.make_archive(big, n_big)
        figures["images_per_s"] = bench_data.throughput(big, sizes, threads, work)
        if not quick:
            bench_data.make_archive(small, 1_000)
            rss: dict[str, dict[str, float]] = {}
            for size in sizes:
                rss[str(size)] = {}
                for label, archive in (("1000", small), (str(n_big), big)):
                    out = subprocess.run(
                        [
                            sys.executable,
                            str(ROOT / "scripts" / "bench_data.py"),
                            "--threads",
                            str(threads),
                            "--rss-child",
                            str(archive),
                            str(size),
                            str(work / f"rss-{label}-{size}"),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    line = out.stdout.strip().splitlines()[-1]
                    rss[str(size)][label] = json.loads(line)["peak_rss_mb"]
            figures["cache_epoch_peak_rss_mb"] = rss
    return figures


PHASE_LINE = re.compile(r"memory: (\w+) peak RSS (\d+) MB")


def phase_peaks(output: str) -> dict[str, float]:
    """Peak RSS of each phase, from the ``memory: <phase> peak RSS <N> MB`` INFO lines."""
    return {m.group(1): float(m.group(2)) for m in PHASE_LINE.finditer(output)}


def train_command(quick: bool) -> dict[str, Any]:
    """Wall time and peak RSS of the README's train command (temporary run and cache dirs)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "imgae_dx_jax.train",
            "--stage",
            "images_001",
            "--run-dir",
            str(Path(tmp) / "run"),
        ]
        if quick:
            cmd += ["--epochs", "1"]
        env = {**os.environ, "XDG_CACHE_HOME": str(Path(tmp) / "cache"), "WANDB_MODE": "offline"}
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        output, _ = proc.communicate()
        wall = time.perf_counter() - start
        # The child has been reaped by communicate(); its rusage is in RUSAGE_CHILDREN, whose
        # ru_maxrss is the largest of all children so far: train_command runs first.
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        display = "python -m imgae_dx_jax.train --stage images_001" + (
            " --epochs 1" if quick else ""
        )
        result = {
            "command": display,
            "wall_s": wall,
            "peak_rss_mb": peak,
            "phase_peak_rss_mb": phase_peaks(output),
            "rc": proc.returncode,
        }
        if proc.returncode:
            result["tail"] = output[-2000:]
        return result


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    """Markdown table of the model figures."""
    head = (
        "| model | size | path | step s | img/s | first step s | eval img/s | peak RSS MB "
        "| PyTorch step s | Flax/PyTorch |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for r in results["models"]:
        if "error" in r:
            rows.append(f"| {r['model']} | {r['size']} | error: {r['error']} |||||||||")
            continue
        torch = r.get("torch_best")
        for label in ("fast", "plain"):
            if label not in r:
                continue
            e = r[label]
            rows.append(
                f"| {r['model']} | {r['size']} | {label} | {e['step_s']:.3f} "
                f"| {e['images_per_s']:.1f} | {e['first_step_s']:.1f} "
                f"| {e['eval_images_per_s']:.0f} | {r['peak_rss_mb']:.0f} "
                + (
                    f"| {torch['step_s']:.3f} ({torch['threads']} thr) | "
                    + (
                        f"{e['torch_ratio']:.2f}x |"
                        if r.get("idle", False)
                        else f"not reported: load {max(max(p) for p in r['load_per_round']):.1f} |"
                    )
                    if torch
                    else "| - | - |"
                )
            )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px only, fewer rounds")
    parser.add_argument("--models", nargs="+", default=["unet", "ra", "ae"])
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--paths", nargs="+", choices=tuple(PATHS), default=list(PATHS))
    parser.add_argument(
        "--torch-python",
        help="a Python with torch (default: this one, or /tmp/torchenv/bin/python)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        nargs="+",
        default=[0, 1],
        help="thread counts of the reference, each timed (0: PyTorch's default, one per core); "
        "the ratio is taken against the fastest (default: 0 1)",
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-data", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="skip the train command")
    parser.add_argument("--threads", type=int, default=2, help="data decoding threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = args.sizes or ([64] if args.quick else [64, 128])
    args.rounds = args.rounds or 3
    if args.rounds * args.steps_per_round < 7:
        parser.error("--rounds x --steps-per-round must be >= 7 (median of >= 7 steps)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        model, size = args.child
        print(json.dumps(measure_model(model, int(size), args)))
        return
    import jax

    args.torch_python = None if args.no_torch else find_torch_python(args.torch_python)
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "load_average": os.getloadavg(),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "torch": "used: " + args.torch_python
        if args.torch_python
        else "not importable: PyTorch reference skipped (see benchmarks/torch_reference.py)",
    }
    print(f"PyTorch reference: {results['torch']}", flush=True)
    if not args.no_train:
        results["train_command"] = train_command(args.quick)
        t = results["train_command"]
        print(
            f"{t['command']}: {t['wall_s']:.1f} s, peak RSS {t['peak_rss_mb']:.0f} MB "
            f"(rc {t['rc']}); by phase: "
            + ", ".join(f"{k} {v:.0f} MB" for k, v in t["phase_peak_rss_mb"].items()),
            flush=True,
        )
    results["models"] = []
    for size in args.sizes:
        for model in args.models:
            r = run_child(model, size, args)
            results["models"].append(r)
            summary = {
                label: round(r[label]["step_s"], 3) for label in ("fast", "plain") if label in r
            }
            if "torch_best" in r:
                summary["torch"] = round(r["torch_best"]["step_s"], 3)
            print(f"{model} {size}px step s: {summary or r.get('error')}", flush=True)
    if not args.no_data:
        results["data"] = data_figures(args.quick, args.sizes, args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table(results))
    for name, value in results.get("data", {}).get("images_per_s", {}).items():
        print(f"  {name:48s} {value:10,.0f} images/s")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

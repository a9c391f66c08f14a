"""Data parallelism over several CPU devices and several processes (jax.distributed, gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from imgae_dx_jax.checkpoints import restore_model
from imgae_dx_jax.config import load_config
from imgae_dx_jax.evaluation import evaluate_run
from imgae_dx_jax.training import train

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("distributed_driver.py")
# The epoch selection (train.select_checkpoint: auto) is the AE's only: it scores the
# validation split after the epoch, which the U-Net and RA loss trajectories do not need.
LAST = "train.select_checkpoint=last"
TINY = {
    "unet": ["model.name=unet", "model.unet.widths=[8,16,32]", "model.unet.groups=4", LAST],
    "ra": ["model.name=ra", "model.ra.widths=[8,16,16]", "model.ra.zdim=16", LAST],
    "ae": ["model.name=ae", "model.ae.widths=[8,16,32]", "model.ae.latent_dim=8"],
}
COMMON = [
    "data.image_size=32",
    # The resume below raises train.max_steps, which would stretch a cosine schedule.
    "train.lr_schedule=constant",
    "train.batch_size=8",
    "train.epochs=1",
    "train.max_steps=4",
    "train.log_every=1",
    "tracking.wandb=disabled",
]


def run_driver(
    jobs: list[tuple[Path, list[str]]],
    devices: int = 1,
    cluster: tuple[str, int, int] | None = None,
) -> subprocess.Popen[str]:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    args = [sys.executable, str(DRIVER), json.dumps([[str(r), o] for r, o in jobs])]
    if cluster is not None:
        args += [cluster[0], str(cluster[1]), str(cluster[2])]
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def results_of(process: subprocess.Popen[str]) -> list[dict]:
    out, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def four_device_runs(tmp_path_factory):
    """Each family trained on 1 and on 4 CPU devices (one process per device count)."""
    root = tmp_path_factory.mktemp("devices")
    processes = {
        devices: run_driver(
            [(root / f"{m}-{devices}", o + COMMON) for m, o in TINY.items()], devices
        )
        for devices in (1, 4)
    }
    runs = {}
    for devices, process in processes.items():
        for model, result in zip(TINY, results_of(process), strict=True):
            runs[model, devices] = (root / f"{model}-{devices}", result)
    return runs


@pytest.mark.parametrize("model", ["unet", "ra", "ae"])
def test_four_devices_follow_the_one_device_loss_trajectory(four_device_runs, model):
    _, one = four_device_runs[model, 1]
    _, four = four_device_runs[model, 4]
    assert (one["devices"], four["devices"]) == (1, 4)
    assert len(one["losses"]) == len(four["losses"]) == 4
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)


def test_a_four_device_checkpoint_restores_and_scores_on_one_device(four_device_runs, tmp_path):
    run, _ = four_device_runs["ae", 4]
    # The export written on 4 devices scores identically when read back on 1 device.
    first = evaluate_run(run)
    scores = (run / "eval" / "scores.csv").read_text()
    second = evaluate_run(run)
    assert first["auroc"] == second["auroc"]
    assert scores == (run / "eval" / "scores.csv").read_text()
    # The 4-device training checkpoint resumes on this 1-device process (resharded restore)
    # and continues with the losses of a run that had 1 device all along.
    config = load_config(
        overrides=TINY["ae"]
        + COMMON[:-3]
        + ["train.max_steps=6", "train.log_every=1", "tracking.wandb=disabled"]
    )
    resumed = train(config, run)
    reference = train(config, tmp_path / "one-device")
    np.testing.assert_allclose(
        step_losses(run)[4:], step_losses(tmp_path / "one-device")[4:], rtol=1e-5
    )
    assert len(step_losses(run)) == 6
    restored = restore_model(run, resumed.config)
    for a, b in zip(leaves(restored), leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert reference.config == resumed.config


def step_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def leaves(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_the_same_parameters_on_disjoint_data(tmp_path):
    coordinator = f"127.0.0.1:{free_port()}"
    run = tmp_path / "two hosts"
    # The last model is exported: the epoch selection would read every validation image on
    # process 0 (it scores them there alone), which this test would count as shared data.
    overrides = [*TINY["ae"], *COMMON, "train.select_checkpoint=last"]
    processes = [run_driver([(run, overrides)], 1, (coordinator, 2, i)) for i in range(2)]
    results = [results_of(p)[0] for p in processes]
    assert [r["process"] for r in results] == [0, 1]
    assert all(r["devices"] == 2 for r in results)
    assert results[0]["params"] == results[1]["params"]
    first, second = (set(r["read"]) for r in results)
    assert first and second and not first & second
    assert len(results[0]["losses"]) == 4 and results[1]["losses"] == []
    assert (run / "export" / "model").is_dir() and (run / "metrics.jsonl").is_file()

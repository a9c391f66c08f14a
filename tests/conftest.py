"""Shared fixtures: everything is built by code from the bundled sample."""

from __future__ import annotations

import os

# One CPU device and quiet TensorFlow-style logs for every test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")

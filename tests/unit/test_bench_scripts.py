"""The benchmark scripts' reporting: what they print is what they measured."""

import ast
import importlib.util
import itertools
import re
import sys
from pathlib import Path

import pytest

from imgae_dx_jax.config import load_config
from imgae_dx_jax.families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_constants() -> dict:
    """The module-level constants of ``benchmarks/torch_reference.py``, read without torch."""
    tree = ast.parse((ROOT / "benchmarks" / "torch_reference.py").read_text())
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id.isupper()
    }


def model_row(loads):
    entry = {
        "step_s": 0.5,
        "images_per_s": 32.0,
        "first_step_s": 9.0,
        "eval_images_per_s": 400.0,
        "torch_ratio": 0.8,
    }
    return {
        "model": "unet",
        "size": 64,
        "fast": entry,
        "peak_rss_mb": 900.0,
        "torch_best": {"step_s": 0.625, "threads": 2},
        "load_per_round": loads,
        "idle": load("bench").machine_was_idle(loads, cpus=2),
    }


def test_speed_ratio_is_printed_only_from_an_idle_machine():
    bench = load("bench")
    assert bench.machine_was_idle([[0.4, 1.2], [1.2, 2.0]], cpus=2)
    assert not bench.machine_was_idle([[0.4, 1.2], [1.9, 3.5]], cpus=2)
    idle = bench.table({"models": [model_row([[0.4, 1.2], [1.2, 2.0]])]})
    assert "| 0.80x |" in idle
    busy = bench.table({"models": [model_row([[0.4, 1.2], [1.9, 3.5]])]})
    assert "0.80x" not in busy and "not reported: load 3.5" in busy


def test_quality_table_shows_the_validation_auroc_used_to_choose():
    quality = load("bench_quality")
    row = {
        "dataset": "pediatric",
        "variant": "ae",
        "image_size": 64,
        "val_auroc": 0.9745,
        "auroc": 0.9601,
        "auroc_ci": [0.9436, 0.9734],
        "auprc": 0.95,
        "auprc_ci": [0.93, 0.97],
        "score": "top10",
        "epochs": 5,
        "steps": 305,
        "train_s": 88.0,
    }
    line = quality.table({"results": [row]}).splitlines()[-1]
    assert line.startswith("| pediatric | ae | 64 | 0.975 | 0.960 (0.944-0.973) |")
    assert line.endswith("| 88 | - |")  # a row from before the load was recorded
    row["measured"] = {"date": "2026-12-03", "load_before": 0.07, "load_after": 1.29}
    header, rule, line = quality.table({"results": [row]}).splitlines()
    assert line.endswith("| 88 | 2026-12-03 (0.1-1.3) |")
    assert header.count("|") == rule.count("|") == line.count("|")
    row["measured"]["device"] = "cpu: cpu"
    assert quality.table({"results": [row]}).endswith("| 88 | 2026-12-03 (0.1-1.3) |")
    row["measured"]["device"] = "gpu: NVIDIA H200"  # an accelerator is named, a CPU is not
    line = quality.table({"results": [row]}).splitlines()[-1]
    assert line.endswith("| 88 | 2026-12-03 (0.1-1.3), gpu: NVIDIA H200 |")
    row["measured"]["precision"] = "bf16"  # a precision other than float32 is named
    line = quality.table({"results": [row]}).splitlines()[-1]
    assert line.endswith("| 88 | 2026-12-03 (0.1-1.3), gpu: NVIDIA H200, bf16 |")
    metrics = {"auroc": 0.96, "score": "top10", "score_val_auroc": {"mean": 0.9, "top10": 0.97}}
    assert quality.summarise(metrics)["val_auroc"] == 0.97


def test_rows_of_an_accelerator_leave_the_machine_of_the_cpu_rows(tmp_path):
    quality = load("bench_quality")
    out, readme = tmp_path / "quality.json", tmp_path / "README.md"
    readme.write_text(f"intro\n{quality.TABLE_START}\nold\n{quality.TABLE_END}\nend\n")

    def row(variant: str, size: int, device: str) -> dict:
        measured = {"date": "2026-12-04", "load_before": 0.1, "load_after": 0.2, "device": device}
        figures = {"auroc": 0.9, "auroc_ci": [0.8, 0.95], "auprc": 0.9, "auprc_ci": [0.8, 0.95]}
        key = {"dataset": "pediatric", "variant": variant, "image_size": size}
        return {**key, **figures, "epochs": 5, "steps": 305, "train_s": 9.0, "measured": measured}

    gpu = {"cpus": 16, "platform": "gpu-host"}
    quality.write_readme(readme, quality.merge(out, [row("ae", 128, "gpu: NVIDIA H200")], gpu))
    assert "machine" not in quality.json.loads(out.read_text())
    assert "in float32 their precision.\n\n| data set" in readme.read_text()
    quality.merge(out, [row("ae", 64, "cpu: cpu")], {"cpus": 2, "platform": "cpu-host"})
    data = quality.merge(out, [row("unet", 128, "gpu: NVIDIA H200")], gpu)
    assert data["machine"] == {"cpus": 2, "platform": "cpu-host"}
    assert [(r["variant"], r["image_size"]) for r in data["results"]] == [
        ("ae", 64),
        ("ae", 128),
        ("unet", 128),
    ]
    quality.write_readme(readme, data)
    text = readme.read_text()
    assert "their precision; the CPU rows ran on 2 CPUs, cpu-host.\n\n| data set" in text
    assert text.startswith("intro\n") and text.endswith("\nend\n") and "old" not in text


def test_each_evaluation_adds_the_row_of_the_model_free_reference_it_scored():
    quality = load("bench_quality")
    reference = {
        "statistic": "-mean",
        "val_auroc": 0.628,
        "auroc": 0.595,
        "auroc_ci": [0.48, 0.708],
        "auprc": 0.644,
        "auprc_ci": [0.385, 0.788],
        "auroc_patient_weighted": 0.553,
        "sensitivity": 0.14,
        "specificity": 0.93,
        "threshold_source": "validation split, 95% specificity on normals",
        "n_normal": 104,
        "n_abnormal": 133,
        "difference": {"diff": 0.038},
    }
    measured = {"date": "2026-12-04", "load_before": 0.1, "load_after": 0.3, "device": "cpu: cpu"}
    row = quality.reference_row("nih", 64, reference, measured)
    assert (row["variant"], row["score"], row["val_auroc"]) == ("image-statistic", "-mean", 0.628)
    line = quality.table({"results": [row]}).splitlines()[-1]
    assert line.startswith("| nih | image-statistic | 64 | 0.628 | 0.595 (0.480-0.708) | 0.553 |")
    assert "| -mean | 0.14 / 0.93 | 0 (0) | none (no model) | 0 |" in line


def test_settings_of_ones_own_are_measured_as_tagged_rows_over_a_variant():
    quality = load("bench_quality")
    assert quality.custom_variant("unet", [], None) == ("unet", "unet", [])
    name, family, overrides = quality.custom_variant(
        "unet-patch1", ["model.unet.noise=patch"], "patch-only"
    )
    assert (name, family) == ("unet-patch1+patch-only", "unet")
    assert overrides == [*quality.VARIANTS["unet-patch1"][1], "model.unet.noise=patch"]
    with pytest.raises(SystemExit, match="--set needs --tag NAME"):
        quality.custom_variant("unet", ["model.unet.noise=patch"], None)
    with pytest.raises(SystemExit, match="--tag names rows measured with --set"):
        quality.custom_variant("unet", [], "patch-only")
    with pytest.raises(SystemExit, match="--tag 'a/b'"):  # it names rows and run directories
        quality.custom_variant("unet", ["model.unet.noise=patch"], "a/b")
    # A broken setting stops before any training, naming its key.
    with pytest.raises(SystemExit, match=re.escape("model.unet.noise")):
        quality.custom_variant("unet", ["model.unet.noise=sometimes"], "x")
    with pytest.raises(SystemExit, match=re.escape("model.unet.widthz")):
        quality.custom_variant("unet", ["model.unet.widthz=[8]"], "x")


def test_every_quality_command_in_the_docs_names_known_variants_and_data_sets():
    """A ``bench-quality`` command in the README or docs runs: its variants and data sets exist
    (argparse would reject an unknown one)."""
    quality = load("bench_quality")
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    # A command may wrap over lines in prose; it ends at a backtick, a comment or the next one.
    commands = [
        re.split(r"[`#]|hatch run|python ", segment)[0]
        for page in pages
        for segment in page.read_text().replace("\n", " ").split("bench-quality ")[1:]
    ]
    assert len(commands) > 10
    for command in commands:
        words = command.split()
        for flag, known in (("--variants", quality.VARIANTS), ("--datasets", quality.DATASETS)):
            if flag in words:
                after = words[words.index(flag) + 1 :]
                names = list(itertools.takewhile(lambda word: not word.startswith("--"), after))
                assert names and set(names) <= set(known), command


def test_every_model_family_is_timed_against_its_pytorch_reference():
    bench = load("bench")
    assert set(bench.TORCH_MODELS) == set(FAMILIES) == set(reference_constants()["MODELS"])


def test_pytorch_reference_has_the_default_settings_of_each_model():
    # The bench compares parameter counts (widths, latent sizes); these settings they miss.
    model = load_config().model
    ref = reference_constants()
    assert ref["LEARNING_RATES"] == {name: getattr(model, name).learning_rate for name in FAMILIES}
    ra = model.ra
    assert (ref["RA_BETA_REC"], ref["RA_BETA_KL"], ref["RA_BETA_NEG"], ref["RA_GAMMA_R"]) == (
        ra.beta_rec,
        ra.beta_kl,
        ra.beta_neg,
        ra.gamma_r,
    )
    assert ref["RA_EMBEDDING_WEIGHT"] == ra.embedding_weight
    assert ref["RA_SALIENCY_SIGMA"] == ra.saliency_sigma
    assert ref["RA_MAP"] == ra.anomaly_map


def test_a_pytorch_reference_with_another_parameter_count_is_refused():
    bench = load("bench")
    flax = {"fast": {"params": 6967937}, "plain": {"params": 6967937}}
    bench.check_param_counts("ra", 6967937, flax)
    with pytest.raises(AssertionError, match="ra: PyTorch reference has 6967936 parameters"):
        bench.check_param_counts("ra", 6967936, flax)


def test_conv_bench_times_the_convolutions_the_fast_path_leaves():
    convs = load("bench_convs")
    found = convs.model_convolutions("unet", 16, 2)  # levels 16, 8, 4 and a 2x2 bottleneck
    same = ((1, 1), (1, 1))
    first = ((2, 16, 16, 1), (3, 3, 1, 32), (1, 1), same)
    assert found[first] == 1 and not convs.input_gradient(first)
    assert found[((2, 16, 16, 32), (3, 3, 32, 32), (1, 1), same)] == 2  # encoder and decoder
    # Two convolutions per level and side; the 2x2 bottleneck's are patches times a matrix.
    assert sum(found.values()) == 12
    assert all(lhs[1] * lhs[2] > 4 for lhs, *_ in found)
    assert convs.torch_command(first, 3) == {
        "cmd": "conv",
        "input": [2, 1, 16, 16],
        "kernel": [32, 1, 3, 3],
        "stride": [1, 1],
        "padding": [[1, 1], [1, 1]],
        "input_grad": False,
        "n": 3,
    }
    assert convs.describe(first) == "2x16x16 1->32 3x3 s1"
    assert convs.describe(((2, 4, 4, 8), (2, 2, 8, 4), (1, 1), ((0, 1), (1, 0)))).endswith(
        "2x2 s1 pad 0-1,1-0"
    )

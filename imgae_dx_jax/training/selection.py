"""Checkpoint selection on the validation patients (``train.select_checkpoint``).

With ``val_auroc``, the model at every validation point (the end of every epoch, and
``model.<name>.validations_per_epoch`` - 1 evenly spaced points before it) scores the validation
split -- the normal *and* abnormal images of the validation patients, never a test image --
and the model whose AUROC is the highest becomes the run's inference export, the model that
evaluation and prediction load. The AUROC is that of the image score ``eval.score`` (for
``auto``, the best candidate, as evaluation picks it later on the same patients:
:func:`~imgae_dx_jax.metrics.threshold.choose_score`). With ``last`` the export is the model
after the last step; ``auto`` (the default) is ``val_auroc`` when the validation split has
normal and abnormal images and ``last`` when it has not. In a run of several stages the
selection restarts with each stage (its validation split grows with the stages): the export
is a model of the last stage trained.

:class:`ValidationAUROC` is the evaluator: built once per stage, it compiles the scoring
function once and :meth:`ValidationAUROC.run` scores one validation point's weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax import nnx

from imgae_dx_jax.config import ConfigError
from imgae_dx_jax.data import Store
from imgae_dx_jax.data.nih import Record
from imgae_dx_jax.inference import Scorer, score_split
from imgae_dx_jax.metrics.threshold import choose_score
from imgae_dx_jax.schema import Config


def has_both_classes(records: Sequence[Record]) -> bool:
    """Whether ``records`` hold normal and abnormal images: whether an AUROC exists."""
    labels = {r.label for r in records}
    return 0 in labels and 1 in labels


class ValidationAUROC:
    """The validation AUROC of a model's weights, for choosing the exported model."""

    def __init__(
        self, config: Config, store: Store, records: Sequence[Record], model: nnx.Module
    ) -> None:
        """Compile the scoring of ``records`` for models shaped like ``model``.

        Args:
            config: the run's config.
            store: where the images are.
            records: the validation split (of the stages trained so far).
            model: a model of the run's architecture (its weights are replaced in ``run``).

        Raises:
            ConfigError: when the split lacks normal or abnormal images.
        """
        if not has_both_classes(records):
            labels = [r.label for r in records]
            raise ConfigError(
                "train.select_checkpoint: val_auroc needs normal and abnormal validation "
                f"images; the validation split has {labels.count(0)} normal and "
                f"{labels.count(1)} abnormal (use last)"
            )
        self.config, self.store, self.records = config, store, tuple(records)
        # The compiled scoring only: ``run`` brings each point's weights, so the evaluator
        # does not hold the stage's first ones for the rest of the stage.
        self._scorer = Scorer(model, config).with_state(None)

    def run(self, model_state: Any) -> dict[str, Any]:
        """Score the validation split with ``model_state`` (host arrays of the model).

        Returns:
            ``val_auroc``: the best candidate score's AUROC; ``val_score``: that candidate.
        """
        scored = score_split(
            self._scorer.with_state(model_state),
            self.config,
            self.records,
            self.store,
            desc="scoring validation",
        )
        name, aurocs = choose_score(scored.labels, scored.candidates, self.config.eval.score)
        return {"val_auroc": aurocs[name], "val_score": name}

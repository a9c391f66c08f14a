"""The evaluation report: tables, figures, documents, and heatmap overlays.

- :mod:`~imgae_dx_jax.report.tables`: the result tables (Markdown and HTML).
- :mod:`~imgae_dx_jax.report.figures`: PNG figures (matplotlib's Agg canvas, chosen when a
  figure is made: importing the report never touches the caller's matplotlib backend).
- :mod:`~imgae_dx_jax.report.documents`: ``report.md`` and the self-contained ``report.html``.
- :mod:`~imgae_dx_jax.report.overlay`: anomaly-map overlays (also used by prediction).
"""

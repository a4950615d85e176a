"""The sentiment + topic + entity model.

- ``models`` (this package's modules): inference, what the pipeline, the model server and
  ``finpulse model predict`` need: ``text`` (the clean-up the model reads), ``network`` (the
  network and the model folder format), ``scorer`` (batched, chunked scoring), ``entity``
  (entity-level sentiment), ``explain``, ``serve`` and ``remote`` (the model server and its client),
  and the shipped model in ``shipped/``.
- ``models.training``: the bundled training data (``training/data/``), splits, the training loop.
- ``models.evaluation``: metrics, calibration, checklists, out-of-domain and entity evaluation.

Inference never imports training or evaluation; their reports live in ``bench/model_reports/``.
"""

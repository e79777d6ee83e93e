"""The bundle generator behind ``scripts/make_bundles.py``, one module per kind of generated file.

- ``specs``: the losses, the dataset specs (``bundles/specs/*.yaml`` or your own file), versions, references;
- ``configs``: ``train.json``, ``evaluate.json``, ``evaluate_ensemble.json``, ``inference.json``,
  ``finetune.json``, ``multi_gpu_train.json`` and ``logging.conf``;
- ``metadata``: ``metadata.json``; ``docs``: ``docs/README.md`` and the ``bundles/README.md`` index;
- ``files``: every file of one bundle as text.
"""

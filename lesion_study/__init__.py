"""The lesion-loss study: everything that runs outside a bundle.

- ``prepare``: datasets from their official layouts or your own folders, into prepared folders with a datalist;
- ``synthetic``, ``demo_data``: synthetic data made here (the demo, the tests);
- ``bundlegen``: the bundle generator (``bundles/specs/*.yaml`` -> ``bundles/<dataset>_<loss>/``);
- ``study``: plan, launch and report a study (every loss of a dataset, folds x seeds), paired statistics;
- ``export``, ``publish``: a trained run as a shareable bundle zip; a study's results into ``docs/results``;
- ``volume_bias``: the controlled volume-bias study (Bertels et al.).

Commands (``pyproject.toml``): lesion-prepare, lesion-bundles, lesion-study, lesion-export, lesion-publish,
lesion-volume-bias, lesion-check-json; ``scripts/*.py`` are thin wrappers with the older names. The bundles'
run-time library is the separate package ``custom_losses``.
"""

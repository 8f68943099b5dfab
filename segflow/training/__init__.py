"""Training: from labelled images to a model package that ``tile-infer`` runs.

One module per concern:

- :mod:`~segflow.training.config` (with :mod:`~segflow.training.data_config`): the YAML config
  of ``segflow train``, validated at the edge (:class:`~segflow.training.config.TrainConfig`).
- :mod:`~segflow.training.loop`: :func:`~segflow.training.loop.train`, its epochs and steps;
  :mod:`~segflow.training.data` (sources, sampler, normalisation, batches),
  :mod:`~segflow.training.run` (network, loss, optimiser, schedule),
  :mod:`~segflow.training.checkpoint` (save, load, restore, fingerprint) and
  :mod:`~segflow.training.report` (what the package README says about the training).
- Chips: :mod:`~segflow.training.sources` (the base of every chip source),
  :mod:`~segflow.training.chips` (rasters, vectors, synthetic data),
  :mod:`~segflow.training.nifti` (NIfTI pairs on the model grid),
  :mod:`~segflow.training.sampling` (validation hold-out, chip positions) and
  :mod:`~segflow.training.augment`.
- :mod:`~segflow.training.losses`: segmentation losses and :func:`~segflow.training.losses.build_loss`.
- :mod:`~segflow.training.evaluation`: quality on validation chips and whole test scenes.

The package a run writes is built by :mod:`segflow.models.writer`, beside the code that reads it.
"""

"""Experiment tracking: TensorBoard, MLflow and Weights & Biases backends, and callbacks of your own.

* ``tracking: [{name: tensorboard}, {name: mlflow}, {name: wandb}]`` in a config logs every round's
  per-task metrics, bytes and privacy, and the resolved config, to those backends (each an extra:
  ``pip install 'fedmtl[tensorboard]'``, ``[mlflow]``, ``[wandb]``); by default everything stays in
  ``RUN_DIR/tracking`` and works offline.
* :class:`Callback` is the protocol they implement; subclass it and pass an instance to
  :meth:`fedmtl.Experiment.add_callback` to receive each round's record yourself.
"""

from fedmtl.tracking.base import Callback, RunInfo, scalars
from fedmtl.tracking.dispatch import Tracking, build_callbacks

__all__ = ["Callback", "RunInfo", "Tracking", "build_callbacks", "scalars"]

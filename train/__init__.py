"""featcache train (stage 2): students against cached teacher features.

From Python: ``train``, ``train_sweep`` and ``compare_runs`` run what ``featcache-train``,
``featcache-train sweep`` and ``featcache-train compare`` run and return plain objects;
``load_student``, ``predict`` and ``export_student`` take a finished run's student out
(docs/python-api.md). Importing this package loads no torch, no pipeline and no teacher code;
``featcache.train.sweep`` and ``featcache.train.compare`` are the engine modules.
"""

from .api import (Comparison, SweepResult, TrainResult, compare_runs, export_student, load_student, predict, train,
                  train_config, train_sweep)

__all__ = ["Comparison", "SweepResult", "TrainResult", "compare_runs", "export_student", "load_student", "predict",
           "train", "train_config", "train_sweep"]

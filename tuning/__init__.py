"""Hyperparameter search over keras_cnn builders with keras-tuner: `search(data, space=..., tuner=...)`.

`tuning.config` checks a search's settings, `tuning.spaces` names the search spaces,
`tuning.hypermodel` builds the zoo's models from them, `tuning.budgets` measures and limits them,
`tuning.shipping` measures the TFLite file each trained trial ships as, `tuning.search` runs keras-tuner
(locally or distributed) through `tuning.tuners`, `tuning.results` writes the table and retrains the
best, and `tuning.pareto` and `tuning.front` compute and report the Pareto front of a
search with several objectives.
"""
from keras_cnn.tuning.results import SearchResult
from keras_cnn.tuning.search import search

__all__ = ["search", "SearchResult"]

"""Hyperparameter search over keras_cnn builders with keras-tuner: `search(data, space=..., tuner=...)`.

`tuning.spaces` names the search spaces, `tuning.hypermodel` builds the zoo's models
from them, `tuning.budgets` measures and limits them, `tuning.search` runs keras-tuner
(locally or distributed) and `tuning.results` writes the table and retrains the best.
"""
from keras_cnn.tuning.results import SearchResult
from keras_cnn.tuning.search import search

__all__ = ["search", "SearchResult"]

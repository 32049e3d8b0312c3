"""`keras_cnn.tuning` for a source checkout run from PYTHONPATH rather than installed.

An install maps the repository's top-level tuning/ folder to `keras_cnn.tuning` (pyproject.toml's
package-dir); a checkout put first on PYTHONPATH, such as a git worktree run with another checkout's
environment, has no such mapping, or the other checkout's. When keras_cnn/ sits in a checkout (a
pyproject.toml and a tuning/ package beside it), this finder answers for that one name from the same
checkout, as setuptools' editable finder does for an editable install; an installed wheel is left alone.
"""
import importlib.machinery
import os
import sys

TUNING = "keras_cnn.tuning"


class _CheckoutTuning:
    """A meta path finder for `keras_cnn.tuning` only: the tuning/ folder of the checkout in `root`."""

    def __init__(self, root):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TUNING:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.root])


def install():
    """Put the finder first on sys.meta_path when keras_cnn is imported from a checkout (once)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    in_checkout = (os.path.isfile(os.path.join(root, "pyproject.toml"))
                   and os.path.isfile(os.path.join(root, "tuning", "__init__.py")))
    if in_checkout and not any(isinstance(finder, _CheckoutTuning) for finder in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutTuning(root))

"""TensorFlow Datasets as a keras_cnn data source: a spec's builder, prepared on first use where the network allows.

`load_data("tfds:NAME")` and `keras-cnn data download tfds:NAME` both come here. A data set that is not yet
prepared in `data_dir` is downloaded and prepared by tfds itself (with its own progress bar) when every host it
downloads from answers a short probe; otherwise loading fails within seconds with what to do instead, rather
than waiting on tfds's download retries.
"""
import logging
import urllib.parse

from keras_cnn.utils import network
from keras_cnn.utils.io import first_line

logger = logging.getLogger("keras_cnn")

PROBE_TIMEOUT = 3  # seconds for each host to answer: an offline machine fails well within 5 s


def builder(spec, data_dir=None):
    """The tfds builder of `spec` ("tfds:NAME" or "tfds:NAME:CONFIG") in `data_dir`, prepared if need be."""
    import tensorflow_datasets as tfds  # imported here: only this source needs it

    scheme, _, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if scheme != "tfds" or not rest:
        raise ValueError(f"Expected a TensorFlow Datasets spec 'tfds:NAME[:CONFIG]'. Received: spec={spec!r}")
    full_name = rest.replace(":", "/", 1)
    try:
        found = tfds.builder(full_name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as err:
        raise ValueError(f"Unknown tfds dataset {full_name!r}. Received: spec={spec!r}") from err
    except Exception as err:  # tfds reports bad configs etc. with many-line messages; keep the first line
        raise ValueError(f"Cannot open tfds dataset {full_name!r}: {first_line(err)}. Received: spec={spec!r}") from err
    if not found.is_prepared():
        _download_and_prepare(found, full_name, spec, data_dir)
    return found


def _download_and_prepare(found, full_name, spec, data_dir):
    """tfds's download_and_prepare when the data set's hosts answer; else a ValueError saying what to do."""
    hosts = sorted({urllib.parse.urlsplit(url).hostname for url in (found.url_infos or {})})
    probes = (network.unreachable(host, PROBE_TIMEOUT) for host in hosts)  # lazily: stop at the first failure
    reason = next(filter(None, probes), None) if hosts else "its download address is unknown"
    if reason:
        raise ValueError(
            f"tfds dataset {full_name!r} is not downloaded/prepared in {found.data_dir_root}, and it cannot be "
            f"downloaded here ({reason}). Run `keras-cnn data download {spec}` on a machine with network and "
            f"pass that folder as data_dir, or export the images and use 'folder:PATH'. "
            f"Received: spec={spec!r}, data_dir={data_dir!r}")
    logger.info("%s: downloading and preparing in %s", full_name, found.data_dir_root)
    found.download_and_prepare()

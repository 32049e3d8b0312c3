"""Whether a download's host answers right now: a short probe before any download, so that a machine without
network fails in seconds with advice rather than after a download's long timeout (or a hang)."""
import os
import socket
import urllib.parse

_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def unreachable(url, timeout):
    """Why the host of `url` (a URL or a bare host name) cannot be reached over HTTPS now, or None when it answers.

    Behind a proxy this says None: only the download itself (urllib, through the proxy) can tell.
    """
    if any(os.environ.get(key) for key in _PROXY_VARIABLES):
        return None
    host = urllib.parse.urlsplit(url).hostname if "://" in url else url
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as error:
        return f"cannot reach {host}: {error}"
    return None

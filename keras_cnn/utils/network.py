"""Whether a download's host answers right now: a short probe before any download, so that a machine without
network fails in seconds with advice rather than after a download's long timeout (or a hang)."""
import os
import socket
import urllib.parse

_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def unreachable(url, timeout):
    """Why the host of `url` (a URL, or a bare host name for HTTPS) cannot be reached now, or None when it answers.

    Behind a proxy this says None: only the download itself (urllib, through the proxy) can tell.
    """
    if any(os.environ.get(key) for key in _PROXY_VARIABLES):
        return None
    parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
    port = parts.port or (80 if parts.scheme == "http" else 443)
    host = parts.hostname
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"cannot reach {host}: {error}"
    return None

"""Hugging Face Hub access for data loaded through ``datasets``: online where the Hub answers, the local
cache only where it does not (offline, ``datasets`` retries for half a minute before it gives up)."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from typing import Iterator

_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub (``HF_ENDPOINT``) answers a TCP connect; False when offline mode is set."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no"):
        return False
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hub access off for ``datasets`` and ``huggingface_hub``, restored afterwards. Both read the environment
    at import, so their module constants are switched too: a missing dataset fails at once."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in _FLAGS}
    saved = [(mod, name, getattr(mod, name)) for mod, name in
             ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
              (hub_constants, "HF_HUB_OFFLINE")) if hasattr(mod, name)]
    for mod, name, _ in saved:
        setattr(mod, name, True)
    os.environ.update(dict.fromkeys(_FLAGS, "1"))
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def hub_or_cache() -> Iterator[None]:
    """The Hub where it answers, else :func:`offline` (the cache only)."""
    if hub_reachable():
        yield
    else:
        with offline():
            yield

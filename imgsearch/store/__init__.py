"""The collection, and the only way to it.

- ``fields``: its columns, declared once; ``filters``: the filters over them;
- ``gateway``: ``MilvusStore``, every call to Milvus, made of the ``catalogue`` (names and properties) and the
  ``collection`` (rows); ``lite``: sharing an embedded data directory;
- ``generation``: the token writers bump and readers compare;
- ``vector_copy``: an in-memory copy of the vectors in front of the gateway (the API's default on Lite).

``MilvusStore``, ``Hit`` and ``release_hosted`` are imported from here when first used: reading the columns or a
request's filter (``imgsearch.store.fields``) does not load pymilvus.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgsearch.store.collection import Hit
    from imgsearch.store.gateway import MilvusStore
    from imgsearch.store.lite import release_hosted

__all__ = ["Hit", "MilvusStore", "release_hosted"]
_WHERE = {
    "Hit": "imgsearch.store.collection",
    "MilvusStore": "imgsearch.store.gateway",
    "release_hosted": "imgsearch.store.lite",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'imgsearch.store' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)

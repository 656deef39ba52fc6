"""The collection, and the only way to it.

- ``fields``: its columns, declared once; ``filters``: the filters over them;
- ``gateway``: ``MilvusStore``, every call to Milvus; ``lite``: sharing an embedded data directory;
- ``generation``: the token writers bump and readers compare;
- ``vector_copy``: the gateway with an in-memory copy of the vectors in front (the API's default on Lite).
"""

from imgsearch.store.collection import Hit
from imgsearch.store.gateway import MilvusStore
from imgsearch.store.lite import release_hosted

__all__ = ["Hit", "MilvusStore", "release_hosted"]

"""The generation token of an embedded collection: writers bump it after every write, readers compare it.

Milvus Lite has no change feed. Every imgsearch writer replaces a small file in the data directory with a new
random token after each write (atomically: write, then rename), and a reader that remembers the token it last
saw knows whether anything was written since. A Milvus server has no such file: ``GenerationToken.of``
returns None there, and nothing that needs a token (the API's vector copy) runs without one.
"""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path


class GenerationToken:
    def __init__(self, data_dir: Path, collection: str):
        self.path = data_dir / f"imgsearch-generation-{collection}"

    @classmethod
    def of(cls, milvus_uri: str, collection: str) -> GenerationToken | None:
        """The token of an embedded collection; None for a collection on a Milvus server."""
        if not milvus_uri.endswith(".db"):
            return None
        return cls(Path(milvus_uri).expanduser().resolve(), collection)

    def read(self) -> str:
        """The current token; '' before the first write."""
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return ""

    def bump(self) -> None:
        """Called by a writer after each write."""
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, self.path)

"""Domain errors. They carry data; the CLI and the HTTP layer turn them into messages and status codes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def validation_message(errors: Iterable[Mapping[str, Any]], where: str = "") -> str:
    """pydantic's errors as one line, "filter.taken_after: Input should be a valid date ...; k: ...": the API's
    422 and the CLI say the same. ``where`` names the place of an error without a location ("body")."""
    lines = []
    for error in errors:
        place = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or where
        lines.append(f"{place}: {error.get('msg')}" if place else str(error.get("msg")))
    return "; ".join(lines)


class ImgsearchError(Exception):
    """Base class of errors a user can act on."""


class PrecisionNotSupportedError(ImgsearchError, ValueError):
    """IMGSEARCH_PRECISION names a setting the device cannot run (fp16 on a CPU, int8 on CUDA)."""


class BackendNotSupportedError(ImgsearchError, ValueError):
    """IMGSEARCH_BACKEND names a backend whose extra is not installed, or that cannot run this model or device."""


class ImageDecodeError(ImgsearchError):
    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class UnknownImageFormatError(ImageDecodeError):
    """The bytes are not in any image format this installation reads."""


class ImageTooLargeError(ImageDecodeError):
    """A possible decompression bomb: too many pixels, or too much memory to decode (mode-aware)."""

    def __init__(self, source: str, pixels: int, limit: int, decoded_bytes: int = 0, max_decoded_bytes: int = 0):
        if decoded_bytes:
            reason = (
                f"decoding would take {decoded_bytes / 2**20:,.0f} MB, over the limit of "
                f"{max_decoded_bytes / 2**20:,.0f} MB (IMGSEARCH_MAX_DECODED_MB)"
            )
        else:
            reason = f"{pixels:,} pixels is over the limit of {limit:,} (IMGSEARCH_MAX_IMAGE_PIXELS)"
        super().__init__(source, f"{reason}; refusing to decode a possible decompression bomb")
        self.pixels = pixels
        self.limit = limit


class ModelMismatchError(ImgsearchError):
    def __init__(self, collection: str, indexed_model: str, indexed_dim: int, model: str, dim: int | None):
        uses = f"'{model}' (dim {dim})" if dim is not None else f"'{model}'"
        super().__init__(
            f"Collection '{collection}' was indexed with model '{indexed_model}' (dim {indexed_dim}), "
            f"but this run uses {uses}. Vectors of different models cannot be compared. "
            f"Either set IMGSEARCH_MODEL={indexed_model} (or leave it unset) to keep using this index, or move "
            f"the collection to the new model while the API keeps serving: imgsearch migrate --model {model}."
        )
        self.collection = collection
        self.indexed_model = indexed_model
        self.indexed_dim = indexed_dim
        self.model = model
        self.dim = dim


class WeightsMismatchError(ModelMismatchError):
    """Same model name, other weights: e.g. a fine-tune saved over the folder the collection was indexed with."""

    def __init__(self, collection: str, model: str):
        ImgsearchError.__init__(
            self,
            f"Collection '{collection}' was indexed with other weights than those now at '{model}' (the model's "
            f"answers to fixed probe inputs differ). Its vectors cannot be compared with this model's. Restore the "
            f"weights it was indexed with, or index into a new collection: IMGSEARCH_COLLECTION=<new name> "
            f"imgsearch index PATH ...",
        )
        self.collection = collection
        self.indexed_model = self.model = model
        self.indexed_dim = 0
        self.dim = None


class SchemaOutdatedError(ImgsearchError):
    """The collection was written by an older imgsearch, whose rows lack columns this one fills."""

    def __init__(self, collection: str, version: int, current: int):
        super().__init__(
            f"Collection '{collection}' has schema version {version}; this imgsearch uses version {current} "
            f"(it adds when each photo was taken, its format and camera). Run `imgsearch upgrade` once: it copies "
            f"every row and vector into the new schema without embedding anything again, and the old collection "
            f"keeps serving until the copy is complete."
        )
        self.collection = collection
        self.version = version


class SchemaTooNewError(ImgsearchError):
    def __init__(self, collection: str, version: int, current: int):
        super().__init__(
            f"Collection '{collection}' has schema version {version}, written by a newer imgsearch than this one "
            f"(version {current}). Update imgsearch."
        )
        self.collection = collection
        self.version = version


class CollectionNotFoundError(ImgsearchError):
    def __init__(self, collection: str):
        super().__init__(f"Collection '{collection}' does not exist yet: run `imgsearch index PATH` first.")
        self.collection = collection


class StoreUnavailableError(ImgsearchError):
    """The Milvus data directory or server cannot be reached."""

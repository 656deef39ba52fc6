"""One Settings object, read from ``IMGSEARCH_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The settings' choices live here, at the bottom of the import graph; the model room imports them.
PrecisionSetting = Literal["auto", "fp32", "bf16", "int8", "fp16"]
BackendSetting = Literal["auto", "torch", "onnx", "openvino"]
WatchMode = Literal["auto", "events", "polling"]
OcrSetting = Literal["on", "off"]
VectorIndexType = Literal["HNSW", "IVF_FLAT", "DISKANN", "FLAT", "AUTOINDEX"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMGSEARCH_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    # Where vectors live. A path ending in .db is an embedded Milvus Lite data directory;
    # http(s)://host:19530 is a Milvus server (standalone, distributed or Zilliz Cloud).
    milvus_uri: str = Field(default_factory=lambda: str(data_home() / "milvus.db"))
    milvus_token: str = ""
    collection: str = Field("images", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    index_type: VectorIndexType = "HNSW"

    # The embedding model of a new collection (an existing one keeps its own; `imgsearch migrate` changes it): a
    # sentence-transformers or Hugging Face CLIP/SigLIP name or directory, IMAGE+TEXT for a pair, or hf-hub:NAME
    # for open_clip (imgsearch/encoder.py).
    model: str = "clip-ViT-B-32"
    device: str = "auto"
    # fp32, bf16, int8 (CPU), fp16 (CUDA), or auto: the fastest that agrees with fp32, measured once per model
    # and machine and remembered in cache_dir (imgsearch/precision.py).
    precision: PrecisionSetting = "auto"
    # What runs the model: torch, or the [onnx] / [openvino] extras, their graphs exported once into cache_dir
    # (imgsearch/backends.py); auto, with precision auto, measures every installed one (else torch).
    backend: BackendSetting = "auto"
    cache_dir: Path = Field(default_factory=lambda: cache_home())
    batch_size: int = Field(32, ge=1, le=4096)
    decode_workers: int = Field(2, ge=1, le=64)
    max_image_pixels: int = Field(100_000_000, ge=1)
    max_file_bytes: int = Field(256 * 1024 * 1024, ge=1)  # no file larger than this is ever read
    max_decoded_mb: int = Field(256, ge=1)  # memory one image may take to decode (mode-aware bomb bound)
    # Read the text in every indexed picture (imgsearch/ocr), after embedding, as a second stage: docs/text-in-images.md.
    ocr: OcrSetting = "on"

    # Search API. "auto" keeps an in-memory copy of the vectors for exact, fast search on Milvus Lite.
    vector_cache: Literal["auto", "on", "off"] = "auto"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str = ""
    cors_origins: list[str] = []
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    allowed_roots: list[Path] = []
    thumbnail_dir: Path = Field(default_factory=lambda: cache_home() / "thumbnails")
    thumbnail_cache_mb: int = Field(512, ge=1)  # least recently used thumbnails go first beyond this

    # Watching folders (imgsearch watch, serve --watch, up): see docs/watching.md.
    # Every watched root is also indexed again (incrementally) this often, because events get lost.
    rescan_minutes: int = Field(60, ge=1, le=7 * 24 * 60)
    # auto: events (inotify) on a local disk, polling on NFS, CIFS/SMB, FUSE and when inotify runs out of watches;
    # polling: every root is polled; events: no polling, even on a network file system.
    watch_mode: WatchMode = "auto"
    watch_poll_seconds: float = Field(60.0, ge=0.2, le=24 * 3600)  # how often a polled root is looked through
    # A changed file is indexed once its size and modification time have stayed the same this long.
    watch_settle_seconds: float = Field(2.0, ge=0.1, le=600)

    # Streamlit UI.
    api_url: str = "http://127.0.0.1:8000"
    ui_password: str = ""  # when set, the page asks for it before showing anything

    @field_validator("milvus_uri")
    @classmethod
    def _uri_is_lite_dir_or_server(cls, uri: str) -> str:
        if not (uri.endswith(".db") or uri.startswith(("http://", "https://", "tcp://", "unix:"))):
            raise ValueError(
                "must be a Milvus Lite data directory ending in .db (e.g. ~/imgsearch/milvus.db) "
                "or a server URI such as http://localhost:19530"
            )
        return uri

    @model_validator(mode="after")
    def _vector_cache_needs_the_generation_token(self) -> Settings:
        # Every imgsearch writer bumps a token in the Lite data directory; a Milvus server has none, so a copy
        # there could never tell that it is behind.
        if self.vector_cache == "on" and not self.is_embedded:
            raise ValueError(
                "IMGSEARCH_VECTOR_CACHE=on needs the embedded Milvus Lite store: on a Milvus server the API cannot "
                "tell when its in-memory copy falls behind. Use auto (the default) or off."
            )
        return self

    @property
    def max_decoded_bytes(self) -> int:
        return self.max_decoded_mb * 1024 * 1024

    @property
    def is_embedded(self) -> bool:
        """True when vectors live in a Milvus Lite data directory on this machine."""
        return self.milvus_uri.endswith(".db")

    @property
    def index_id(self) -> str:
        """Which index these settings name, whatever folder a process started in: a hash of the Milvus URI (a
        Lite directory by its absolute path) and the collection name. The CLI asks a running API to search only
        when its /health says the same."""
        import hashlib

        uri = str(Path(self.milvus_uri).expanduser().resolve()) if self.is_embedded else self.milvus_uri
        return hashlib.sha256(f"{uri}|{self.collection}".encode()).hexdigest()[:16]

    def for_device(self, device: str) -> Settings:
        """These settings as the indexer runs them on ``device``. On CUDA, where the model outruns JPEG decoding
        many times over, a batch and the decode threads not set by the user are sized for a GPU: batches of
        ``GPU_BATCH_SIZE`` and a decode thread per usable core (at most 64)."""
        if not device.startswith("cuda"):
            return self
        tuned = {"batch_size": GPU_BATCH_SIZE, "decode_workers": min(64, len(os.sched_getaffinity(0)))}
        return self.model_copy(
            update={name: value for name, value in tuned.items() if name not in self.model_fields_set}
        )

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


# fp16 ViT-B/32 on an H100: 18,130 images/s at a batch of 256 (4.4x fp32), 22,417 at 1,024
# (bench/gpu_throughput.py): 256 keeps most of it with a quarter of the memory held per batch.
GPU_BATCH_SIZE = 256


def data_home() -> Path:
    """Where the index lives by default: the platform's folder for a user's data ($XDG_DATA_HOME/imgsearch, by
    default ~/.local/share/imgsearch, on Linux), whatever folder a command is started in."""
    import platformdirs

    return Path(platformdirs.user_data_dir("imgsearch", appauthor=False))


def cache_home() -> Path:
    """Where what can be made again lives by default ($XDG_CACHE_HOME/imgsearch, by default ~/.cache/imgsearch):
    the model's measured settings and graphs, thumbnails."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("imgsearch", appauthor=False))


OLD_DATA = Path("data") / "milvus.db"  # where versions before the data home kept the index: ./data under the cwd


def old_index_notice(settings: Settings) -> str | None:
    """One line for a user whose index lies in ./data, as older versions kept it, while this command uses the data
    home: where it is, and how to keep using it or move it (paths quoted for a shell). None when there is nothing
    to say."""
    import shlex

    if "milvus_uri" in settings.model_fields_set or not OLD_DATA.exists():
        return None
    old, new = OLD_DATA.resolve(), Path(settings.milvus_uri)
    if old == new.resolve():
        return None
    return (
        f"imgsearch: an index from an older version is in {shlex.quote(str(old))}, but the index now lives in "
        f"{shlex.quote(str(new.parent))}: to keep using the old one, set "
        f"IMGSEARCH_MILVUS_URI={shlex.quote(str(old))}; to move it, stop imgsearch and run "
        f"mkdir -p {shlex.quote(str(new.parent))} && mv {shlex.quote(str(old))} {shlex.quote(str(new))}"
    )


@lru_cache
def get_settings() -> Settings:
    return Settings()

"""What tests (and bench/) share: tiny models built locally (models), photos (photos), processes and servers
(processes, milvus), an imgsearch v1 collection (legacy_v1) and the hooks of `make mutants` (mutation)."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

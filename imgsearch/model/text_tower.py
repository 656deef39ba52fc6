"""The text tower's setting, chosen for the latency of one query.

Indexing embeds pictures by the thousand, so ``precision`` chooses the image tower's setting for throughput. A
query is one text: there, another setting wins (on a Xeon with AMX, torch bf16 ran a query no faster than fp32,
and onnx int8 4.2x faster). With ``IMGSEARCH_PRECISION=auto`` and ``IMGSEARCH_BACKEND=auto`` (the defaults) the
text tower is measured apart:

- every text setting this CPU runs well (torch bf16 and int8; onnx fp32 and int8 and openvino fp32, and bf16 on
  CPUs with it, from one export of the text tower: text_graphs.py), timed on one text and on a batch of eight;
- each compared with torch fp32 on ``TEXT_PROBE``: the lowest cosine at least 0.99, and each text's 10 nearest
  probe pictures (``TEXT_NEIGHBOURS``) the same by at least 0.95 on average (``AGREEMENT``);
- the fastest on one text that agrees, and beats torch fp32 by ``FASTER_BY``, is kept; else torch fp32.

It costs about 10 s for ViT-B/32 on 2 cores, once per model and machine: the server measures in the background
after it starts, ``imgsearch index`` at the end of a run, and ``imgsearch tune``. The choice is remembered in the
text folder's ``choice.json``, for this machine (CPU model and flags).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from imgsearch.media.safe_files import UnsafeFileError, private_dir, read_own_file, replace_own_file
from imgsearch.model.agreement import TEXT_NEIGHBOURS, TEXT_PROBE, min_cosine, top_k_overlap
from imgsearch.model.choice_cache import Measured, setting_label
from imgsearch.model.cpu import BF16_INSTRUCTIONS, INT8_DOT_PRODUCTS, SPEED_FLAGS, cpu_flags, cpu_model
from imgsearch.model.runtimes import own_file

log = logging.getLogger(__name__)

FASTER_BY = 1.1  # a setting replaces torch fp32 only if at least this much faster on one text
ONE_QUERY = TEXT_PROBE[0]
_CHOICE_FILE = "choice.json"
_MAX_CHOICE_BYTES = 256 * 1024
_KNOWN = {("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("onnx", "fp32"), ("onnx", "int8")}
_KNOWN |= {("openvino", "fp32"), ("openvino", "bf16")}


@dataclass
class TextTrial(Measured):
    backend: str
    precision: str
    one_ms: float  # one text, median
    eight_ms: float  # a batch of eight texts, median
    min_cosine: float = 1.0
    neighbour_overlap: float = 1.0


@dataclass
class TextChoice:
    backend: str
    precision: str
    trials: list[TextTrial] = field(default_factory=list)
    cached: bool = False

    @property
    def label(self) -> str:
        return setting_label(self.backend, self.precision)

    def describe(self) -> str:
        parts = [
            f"{t.label} {t.one_ms:.1f} ms"
            + ("" if i == 0 else f" (min cosine {t.min_cosine:.4f}, neighbours {t.neighbour_overlap:.2f}")
            + ("" if i == 0 else ")" if t.agrees else ", below the agreement gate)")
            for i, t in enumerate(self.trials)
        ]
        return f"text tower -> {self.label}{' (cached)' if self.cached else ''}: " + "; ".join(parts)


def text_candidates(flags: set[str], exported: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The text settings worth timing on a CPU with ``flags``: the ``exported`` ones it runs well, or torch's
    where nothing was exported. On one text an exported graph beat torch at every setting measured (torch's
    per-call overhead: 35 ms fp32, 9.6 ms int8, 5.5 ms onnx int8 for ViT-B/32 on an AVX-512 EPYC), and leaving
    torch's out saves their quantising and timing (4 s)."""
    bf16 = bool(flags & BF16_INSTRUCTIONS)
    int8 = bool(flags & INT8_DOT_PRODUCTS) or "avx2" in flags
    fits = [option for option in exported if (option[1] != "bf16" or bf16) and (option[1] != "int8" or int8)]
    return fits or [("torch", "bf16")] * bf16 + [("torch", "int8")] * int8


def time_text(embed: Callable[[list[str]], np.ndarray], repeats: int = 7) -> tuple[float, float]:
    """(one text, eight texts) in ms: the median of ``repeats`` runs, and of 3, after a warm-up."""
    eight = TEXT_PROBE[:8]
    embed([ONE_QUERY])
    embed(eight)

    def median_ms(texts: list[str], runs: int) -> float:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            embed(texts)
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    return median_ms([ONE_QUERY], repeats), median_ms(eight, 3)


def agreement(reference: np.ndarray, other: np.ndarray, pictures: np.ndarray) -> tuple[float, float]:
    """(lowest cosine, text -> picture top-``TEXT_NEIGHBOURS`` overlap) of ``other`` against ``reference``: the
    same texts' vectors in two settings; ``pictures`` are torch fp32's."""
    return min_cosine(reference, other), top_k_overlap(reference, pictures, other, pictures, TEXT_NEIGHBOURS)


def pick_text(trials: list[TextTrial]) -> TextTrial:
    """The fastest on one text that agrees and beats the first trial (torch fp32) by FASTER_BY; else the first."""
    base = trials[0]
    good = [t for t in trials[1:] if t.agrees and t.one_ms * FASTER_BY <= base.one_ms]
    return min(good, key=lambda t: t.one_ms) if good else base


def measure(
    embedders: dict[tuple[str, str], Callable[[list[str]], np.ndarray]],
    pictures: np.ndarray,
    finished: Callable[[tuple[str, str]], None] = lambda option: None,
) -> TextChoice:
    """Time each of ``embedders`` (torch fp32 first) and compare it with torch fp32; the choice ``pick_text``
    makes. A setting that fails to run is left out, with a warning."""
    (baseline, embed_fp32), *others = embedders.items()
    reference = embed_fp32(TEXT_PROBE)
    trials = [TextTrial(*baseline, *time_text(embed_fp32))]
    for option, embed in others:
        try:
            trial = TextTrial(*option, *time_text(embed), *agreement(reference, embed(TEXT_PROBE), pictures))
        except Exception as exc:  # noqa: BLE001 - a setting this build cannot run is not offered
            log.warning("imgsearch: the text tower does not run as %s here: %s", setting_label(*option), exc)
            continue
        finally:
            finished(option)
        trials.append(trial)
    best = pick_text(trials)
    return TextChoice(best.backend, best.precision, trials)


def _machine() -> str:
    return f"{cpu_model()}|{' '.join(flag for flag in SPEED_FLAGS if flag in cpu_flags())}"


def cached_text_choice(folder: Path) -> TextChoice | None:
    """The choice remembered in ``folder`` for this machine, or None (none, another machine's, or a file that
    makes no sense: measured again)."""
    path = Path(folder) / _CHOICE_FILE
    if not os.path.lexists(path):
        return None
    try:
        if not own_file(path):
            raise UnsafeFileError(str(path), "not a file of this user")
        entry = json.loads(read_own_file(path, _MAX_CHOICE_BYTES))
        if entry.get("machine") != _machine():
            return None
        choice = TextChoice(
            entry["backend"], entry["precision"], [TextTrial(**t) for t in entry["trials"]], cached=True
        )
        if not _makes_sense(choice):
            raise ValueError("an entry that makes no sense")
    except Exception as exc:  # noqa: BLE001 - a damaged or planted file is measured again, never an error
        log.warning("imgsearch: ignoring the text tower's choice in %s (%s)", folder, str(exc)[:200])
        return None
    return choice


def _makes_sense(choice: TextChoice) -> bool:
    """Known settings with finite measurements (a hand-edited or damaged file may hold anything)."""
    numbers = [v for t in choice.trials for v in (t.one_ms, t.eight_ms, t.min_cosine, t.neighbour_overlap)]
    options = [(choice.backend, choice.precision)] + [(t.backend, t.precision) for t in choice.trials]
    return (
        bool(choice.trials)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers)
        and all(isinstance(b, str) and isinstance(p, str) and (b, p) in _KNOWN for b, p in options)
    )


def remember(folder: Path, choice: TextChoice) -> None:
    """Write ``choice`` for this machine into ``folder`` (made this user's alone), in one step."""
    entry = {"machine": _machine(), "backend": choice.backend, "precision": choice.precision}
    try:
        private_dir(folder)
        replace_own_file(
            Path(folder) / _CHOICE_FILE, json.dumps({**entry, "trials": [asdict(t) for t in choice.trials]}, indent=1)
        )
    except (OSError, UnsafeFileError) as exc:
        log.warning("imgsearch: cannot remember the text tower's choice in %s: %s", folder, exc)

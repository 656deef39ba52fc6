"""Label sets and zero-shot tagging: which labels an image gets, from its vector alone.

A label set is a named list of labels. Each label is embedded as text through prompt templates ("a photo of
a {}", several averaged) and compared with the stored image vectors. Two ways to decide:

- ``cosine`` (default): an image's ``top`` most similar labels, each kept if its cosine similarity clears the
  label's own ``threshold`` or else the set's ``min_score``;
- ``softmax``: CLIP's classifier: a softmax over the set's labels of the similarities times the model's logit
  scale (100 for CLIP), the ``top`` most probable kept if their probability clears the threshold.

Everything here is pure: parsing and checking label files, and deciding tags from a score matrix.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from imgsearch.errors import ImgsearchError

MAX_LABELS = 10_000  # per set
MAX_LABEL_CHARS = 200
MAX_TEMPLATES = 16
MAX_TEMPLATE_CHARS = 300
MAX_TOP = 16  # tags one set gives an image
MAX_TAGS = 64  # tags an image holds, over all sets (the array field's capacity)
MAX_LABEL_FILE_BYTES = 4 * 1024 * 1024
DEFAULT_TEMPLATES = ("a photo of a {}.",)
DEFAULT_MIN_SCORE = {"cosine": 0.25, "softmax": 0.1}  # CLIP ViT-B/32's scale; see README "Tags"
VALID_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

Mode = Literal["cosine", "softmax"]


class LabelSetError(ImgsearchError, ValueError):
    """A label set that cannot be used; ``where`` is the file (and line) or the request field at fault."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class Label:
    name: str
    threshold: float | None = None  # overrides the set's min_score for this label
    templates: tuple[str, ...] = ()  # overrides the set's templates for this label


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[Label, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    top: int = 3
    min_score: float | None = None  # None: DEFAULT_MIN_SCORE[mode]
    mode: Mode = "cosine"

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def cut(self) -> float:
        return DEFAULT_MIN_SCORE[self.mode] if self.min_score is None else self.min_score

    def prompts(self) -> list[list[str]]:
        """Per label, the texts whose embeddings are averaged into the label's embedding."""
        return [
            [template.replace("{}", label.name) for template in (label.templates or self.templates)]
            for label in self.labels
        ]

    def thresholds(self) -> np.ndarray:
        return np.array(
            [self.cut if label.threshold is None else label.threshold for label in self.labels], dtype=np.float32
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelSet:
        return make_label_set(
            data.get("name", ""),
            data.get("labels", []),
            where="stored label set",
            **{key: data[key] for key in ("templates", "top", "min_score", "mode") if key in data},
        )


# ── Checking ──────────────────────────────────────────────────────────────────────────────────────────────


def make_label_set(
    name: str,
    labels: Sequence[str | Mapping[str, Any] | Label],
    where: str = "",
    templates: Sequence[str] | None = None,
    top: int = 3,
    min_score: float | None = None,
    mode: str = "cosine",
    lines: Sequence[int] | None = None,
) -> LabelSet:
    """A checked LabelSet. Raises LabelSetError naming ``where`` (and the label's line, given ``lines``)."""
    if not isinstance(name, str) or not VALID_SET_NAME.fullmatch(name):
        raise LabelSetError(where, f"set name {str(name)[:80]!r}: use 1-64 letters, digits, '_', '-' or '.'")
    if mode not in DEFAULT_MIN_SCORE:
        raise LabelSetError(where, f"mode {str(mode)[:40]!r}: use 'cosine' or 'softmax'")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise LabelSetError(where, f"top must be a whole number from 1 to {MAX_TOP}, not {top!r}")
    set_templates = _check_templates(DEFAULT_TEMPLATES if templates is None else templates, where)
    low = -1.0 if mode == "cosine" else 0.0
    min_score = _score(min_score, low, where, "min_score")
    if not labels:
        raise LabelSetError(where, "no labels: give one label per line")
    if len(labels) > MAX_LABELS:
        raise LabelSetError(where, f"{len(labels):,} labels; a set holds at most {MAX_LABELS:,}")
    checked: list[Label] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(labels):
        at = f"line {lines[i]}" if lines else f"label {i + 1}"
        label = _label(raw, low, f"{where}, {at}" if where else at)
        key = label.name.casefold()
        if key in seen:
            first = f"line {lines[seen[key]]}" if lines else f"label {seen[key] + 1}"
            raise LabelSetError(where, f"{at}: label {label.name!r} is given twice (first at {first})")
        seen[key] = i
        checked.append(label)
    return LabelSet(name, tuple(checked), set_templates, top, min_score, mode)  # type: ignore[arg-type]


def _check_templates(templates: Sequence[str], where: str) -> tuple[str, ...]:
    if isinstance(templates, str) or not templates:
        raise LabelSetError(where, "templates: give a list of at least one, such as ['a photo of a {}.']")
    if len(templates) > MAX_TEMPLATES:
        raise LabelSetError(where, f"{len(templates)} templates; at most {MAX_TEMPLATES}")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise LabelSetError(
                where, f"template {str(template)[:80]!r} must hold '{{}}' exactly once, where the label goes"
            )
        if len(template) > MAX_TEMPLATE_CHARS:
            raise LabelSetError(where, f"template longer than {MAX_TEMPLATE_CHARS} characters")
    return tuple(templates)


def _label(raw: str | Mapping[str, Any] | Label, low: float, where: str) -> Label:
    if isinstance(raw, Label):
        raw = asdict(raw)
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"name", "threshold", "templates"}
        if unknown:
            raise LabelSetError(where, f"unknown key {sorted(unknown)[0]!r} (a label has name, threshold, templates)")
        name, threshold, templates = raw.get("name"), raw.get("threshold"), raw.get("templates") or ()
    else:
        name, threshold, templates = raw, None, ()
    if not isinstance(name, str):
        raise LabelSetError(where, f"a label must be text, not {type(name).__name__}")
    name = " ".join(name.split())  # inner runs of spaces and tabs as one space
    if not name:
        raise LabelSetError(where, "empty label")
    if len(name) > MAX_LABEL_CHARS:
        raise LabelSetError(where, f"label is {len(name)} characters long; at most {MAX_LABEL_CHARS}")
    if any(ord(char) < 32 or 0x7F <= ord(char) < 0xA0 for char in name):
        raise LabelSetError(where, "label holds a control character")
    return Label(
        name, _score(threshold, low, where, "threshold"), _check_templates(templates, where) if templates else ()
    )


def _score(value: Any, low: float, where: str, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= 1:
        raise LabelSetError(where, f"{what} must be a number from {low:g} to 1, not {value!r}")
    return float(value)


# ── Files ─────────────────────────────────────────────────────────────────────────────────────────────────


def load_label_file(path: str | Path, name: str | None = None, **options: Any) -> LabelSet:
    """A label set from a file: plain text (one label per line; blank lines and lines starting with '#'
    skipped), or YAML (``.yaml``/``.yml``): a list of labels, or a mapping with ``labels`` and any of
    ``name``, ``templates``, ``top``, ``min_score``, ``mode``. A label in YAML may be a mapping with ``name``,
    ``threshold`` and ``templates``. ``options`` (from the command line) win over the file's; the name
    defaults to the file's stem."""
    path = Path(path)
    where = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_LABEL_FILE_BYTES + 1)
    except OSError as exc:
        raise LabelSetError(where, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_LABEL_FILE_BYTES:
        raise LabelSetError(where, f"over {MAX_LABEL_FILE_BYTES // 2**20} MB; is this a label file?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelSetError(where, f"not UTF-8 text (byte {exc.start})") from None
    given = {key: value for key, value in options.items() if value is not None}
    default_name = re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem).lstrip("._-")[:64] or "labels"
    if path.suffix.lower() in (".yaml", ".yml"):
        return _from_yaml(text, where, name, default_name, given)
    labels, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            labels.append(stripped)
            lines.append(number)
    return make_label_set(name or default_name, labels, where, lines=lines, **given)


def _from_yaml(text: str, where: str, name: str | None, default_name: str, given: dict[str, Any]) -> LabelSet:
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        raise LabelSetError(where + at, f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if document is None:
        raise LabelSetError(where, "no labels: the file is empty")
    if isinstance(document, list):
        document = {"labels": document}
    if not isinstance(document, dict):
        raise LabelSetError(where, "expected a list of labels, or a mapping with 'labels'")
    unknown = set(document) - {"name", "labels", "templates", "top", "min_score", "mode"}
    if unknown:
        raise LabelSetError(where, f"unknown key {sorted(map(str, unknown))[0]!r}")
    labels = document.get("labels")
    if not isinstance(labels, list):
        raise LabelSetError(where, "'labels' must be a list")
    options = {key: document[key] for key in ("templates", "top", "min_score", "mode") if key in document} | given
    return make_label_set(name or document.get("name") or default_name, labels, where, **options)


# ── Stored with the collection ────────────────────────────────────────────────────────────────────────────


def encode(label_set: LabelSet) -> str:
    """A collection property's value: compressed, since 10,000 labels of 200 characters are 2 MB as JSON."""
    raw = json.dumps(label_set.to_json(), separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def decode(value: str) -> LabelSet:
    return LabelSet.from_json(json.loads(zlib.decompress(base64.b64decode(value))))


# ── Deciding tags ─────────────────────────────────────────────────────────────────────────────────────────


@dataclass
class Tags:
    """The tags of one image, best first, with the score that decided each."""

    names: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def decide(similarities: np.ndarray, label_set: LabelSet, logit_scale: float = 100.0) -> list[Tags]:
    """Each image's tags from the set: ``similarities`` is (images, labels) cosine similarity."""
    values = np.asarray(similarities, dtype=np.float32)
    if label_set.mode == "softmax":
        logits = values * np.float32(logit_scale)
        logits -= logits.max(axis=1, keepdims=True)
        values = np.exp(logits)
        values /= values.sum(axis=1, keepdims=True)
    top = min(label_set.top, values.shape[1])
    best = (
        np.argpartition(-values, top - 1, axis=1)[:, :top]
        if top < values.shape[1]
        else np.broadcast_to(np.arange(values.shape[1]), values.shape).copy()
    )
    best_values = np.take_along_axis(values, best, axis=1)
    order = np.argsort(-best_values, axis=1, kind="stable")
    best, best_values = np.take_along_axis(best, order, axis=1), np.take_along_axis(best_values, order, axis=1)
    kept = best_values >= label_set.thresholds()[best]
    names = label_set.names
    return [
        Tags(
            [names[j] for j, keep in zip(row, keeps) if keep],
            [round(float(v), 4) for v, keep in zip(row_values, keeps) if keep],
        )
        for row, row_values, keeps in zip(best, best_values, kept)
    ]


def merge(per_set: Sequence[Tags]) -> Tags:
    """One image's tags over several sets: a label two sets give keeps its higher score; at most MAX_TAGS."""
    best: dict[str, float] = {}
    for tags in per_set:
        for name, score in zip(tags.names, tags.scores):
            if name not in best or score > best[name]:
                best[name] = score
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:MAX_TAGS]
    return Tags([name for name, _ in ranked], [score for _, score in ranked])


class TopImages:
    """The ``k`` images most similar to each label, exactly, fed batch by batch; ties go to the smaller id."""

    def __init__(self, labels: int, k: int):
        self.k = k
        self.ids: list[str] = []
        self._scores = np.empty((labels, 0), dtype=np.float32)
        self._rows = np.empty((labels, 0), dtype=np.int64)

    def add(self, ids: Sequence[str], similarities: np.ndarray) -> None:
        """``similarities``: (len(ids), labels)."""
        first = len(self.ids)
        self.ids.extend(ids)
        scores = np.concatenate([self._scores, np.asarray(similarities, dtype=np.float32).T], axis=1)
        rows = np.concatenate(
            [self._rows, np.broadcast_to(np.arange(first, len(self.ids)), (scores.shape[0], len(ids)))], axis=1
        )
        if scores.shape[1] > self.k:
            best = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
            kth = np.take_along_axis(scores, best, axis=1).min(axis=1)
            tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > self.k)  # which k is a matter of ids
            for label in tied:
                order = sorted(
                    np.flatnonzero(scores[label] >= kth[label]),
                    key=lambda j, label=label: (-scores[label, j], self.ids[rows[label, j]]),
                )
                best[label] = order[: self.k]
            scores, rows = np.take_along_axis(scores, best, axis=1), np.take_along_axis(rows, best, axis=1)
        self._scores, self._rows = scores, rows

    def ranked(self) -> list[list[tuple[int, float]]]:
        """Per label, (row, score) best first: ``row`` indexes ``self.ids`` in the order they were added."""
        return [
            sorted(
                ((int(row), float(score)) for row, score in zip(rows, scores)),
                key=lambda pair: (-pair[1], self.ids[pair[0]]),
            )
            for rows, scores in zip(self._rows, self._scores)
        ]

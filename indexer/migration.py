"""``imgsearch migrate``: move a collection to another model while the API keeps answering.

The configured name (``images``) is an alias. A migration builds a second collection beside the one it points
to, named after the schema version and the new model (``images_v4_3f2a9c1e``), by indexing the collection's
recorded roots again with the new model: the indexer's own incremental run, so a migration that is killed
resumes where its rows end. A second, quick run picks up what changed on disk meanwhile. Then the alias moves
in one step. The running API watches the alias, loads the model recorded with the collection it now points to,
and swaps over once it is ready (search_api/services/serving.py); queries are always embedded by the model of
the collection they search. The old collection stays for ``--rollback`` until ``imgsearch drop --old``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from imgsearch.errors import CollectionNotFoundError, ImgsearchError
from imgsearch.indexer.runner import IndexReport, ProgressCallback, run_index
from imgsearch.model.embedder import Embedder
from imgsearch.search.relevance import family_cutoff
from imgsearch.settings import Settings
from imgsearch.store import MilvusStore
from imgsearch.store.catalogue import CUTOFF_PROPERTY, LABEL_SET_PROPERTY, fingerprints_match
from imgsearch.store.fields import SCHEMA_VERSION

MIGRATION_PROPERTY = "imgsearch.migration"  # "building" while a migration fills a collection, then "complete"
PREVIOUS_PROPERTY = "imgsearch.previous"  # the collection the name pointed to before it pointed here


class MigrationError(ImgsearchError):
    pass


@dataclass
class MigrationReport:
    old: str  # the collections, by their own names
    new: str
    old_model: str
    model: str
    resumed: bool = False  # the new collection held rows from an earlier, interrupted run
    build: IndexReport | None = None
    catch_up: IndexReport | None = None  # the second run: files changed while the first ran
    rows_before: int = 0
    rows_after: int = 0
    not_carried: list[str] = field(default_factory=list)  # paths indexed before and not now (gone, unreadable)
    switched: bool = False


def new_collection_name(store: MilvusStore, model: str) -> str:
    """The collection a migration to ``model`` builds: the same name for the same model, so a re-run resumes."""
    return f"{store.physical_name(SCHEMA_VERSION)}_{hashlib.sha1(model.encode()).hexdigest()[:8]}"


def build(
    settings: Settings,
    encoder: Embedder,
    store: MilvusStore,
    show_progress: bool = False,
    on_progress: ProgressCallback | None = None,
) -> MigrationReport:
    """Fill the collection for ``encoder``'s model from the files under the current collection's roots."""
    old = store.target()
    if old is None:
        raise CollectionNotFoundError(store.collection)
    store.check_schema()
    properties = store.properties_of(old)
    old_model = properties.get("imgsearch.model", "")
    recorded = json.loads(properties.get("imgsearch.fingerprint", "null") or "null")
    if old_model == encoder.name and (recorded is None or fingerprints_match(recorded, encoder.fingerprint)):
        raise MigrationError(f"collection '{store.collection}' is already embedded by {encoder.name}")
    roots = store.indexed_roots()
    if not roots:
        raise MigrationError(f"collection '{store.collection}' records no indexed folders to read again")
    # The name's earlier collection for this model, if it has one (a migration back): bring it up to date.
    new = next(
        (name for name in store.others() if store.properties_of(name).get("imgsearch.model") == encoder.name),
        new_collection_name(store, encoder.name),
    )
    report = MigrationReport(old, new, old_model, encoder.name, rows_before=store.count())
    target = store.pinned(new, own_token=True)
    if target.exists():
        report.resumed = target.count() > 0
        target.check_model(encoder.name, encoder.dim, encoder.fingerprint)  # other weights under the same name
    else:
        store.create_physical(new, encoder.dim, _label_sets(properties) | _new_properties(encoder))
    try:
        report.build = run_index(roots, settings, encoder, target, show_progress=show_progress, on_progress=on_progress)
        # Folders indexed into the old collection while the build ran are read too.
        report.catch_up = run_index(store.indexed_roots(), settings, encoder, target)
        report.rows_after = target.count()
        indexed_now = {row["path"] for row in target.iter_rows(fields=["path"])}
        report.not_carried = sorted(
            row["path"] for row in store.iter_rows(fields=["path"]) if row["path"] not in indexed_now
        )
    finally:
        target.close()
    if report.build.refused or report.catch_up.refused:
        raise MigrationError(
            "; ".join(report.build.refused + report.catch_up.refused)
            + f". The name still points to {old}; nothing was switched."
        )
    store.set_properties(new, {MIGRATION_PROPERTY: "complete"})
    return report


def _new_properties(encoder: Embedder) -> dict[str, str]:
    """What the collection a migration builds records from the start: its model, and that it is being built."""
    return {
        "imgsearch.model": encoder.name,
        "imgsearch.dim": str(encoder.dim),
        "imgsearch.fingerprint": json.dumps([round(float(v), 5) for v in encoder.fingerprint]),
        CUTOFF_PROPERTY: family_cutoff(encoder.name).to_json(),
        MIGRATION_PROPERTY: "building",
    }


def switch(store: MilvusStore, report: MigrationReport, allow_missing: bool = False) -> None:
    """Point the name at the built collection; remember the old one for a rollback. Refused while images of the
    old collection are not in the new one (an unmounted share reads as an empty folder), unless
    ``allow_missing``. Label sets saved or removed while the new collection was built are carried again."""
    current = store.target()
    if current != report.old:  # another migrate or a rollback moved the name since this build began
        raise MigrationError(
            f"'{store.collection}' points to {current} now, not to {report.old} as when this "
            f"build began; nothing was switched. Run the command again"
        )
    if report.not_carried and not allow_missing:
        raise MigrationError(
            f"{len(report.not_carried)} images of {report.old} are not in {report.new} (their files are gone or "
            f"unreadable now), e.g. {report.not_carried[0]}; nothing was switched. Mount or restore them and run "
            f"the same command again (it resumes), or pass --allow-missing to switch without them"
        )
    store.set_properties(report.new, _label_sets(store.properties_of(report.old)) | {PREVIOUS_PROPERTY: report.old})
    store.point_to(report.new)
    report.switched = True


def _label_sets(properties: dict[str, str]) -> dict[str, str]:
    """A collection's label sets as properties (a removed set's is empty, so copying them removes it too)."""
    return {key: value for key, value in properties.items() if key.startswith(LABEL_SET_PROPERTY)}


def rollback(store: MilvusStore) -> tuple[str, str]:
    """Point the name back at the collection it pointed to before the last switch: (from, to). A second rollback
    undoes the first."""
    current = store.target()
    if current is None:
        raise CollectionNotFoundError(store.collection)
    previous = store.properties_of(current).get(PREVIOUS_PROPERTY, "")
    if not previous or previous not in store.others():
        raise MigrationError(
            f"collection '{store.collection}' has no earlier collection to go back to"
            + (f" ({previous} was dropped)" if previous else "")
        )
    if store.properties_of(previous).get(MIGRATION_PROPERTY, "complete") != "complete":
        raise MigrationError(f"{previous} was never completely built")
    store.set_properties(previous, _label_sets(store.properties_of(current)) | {PREVIOUS_PROPERTY: current})
    store.point_to(previous)
    return current, previous


@dataclass(frozen=True)
class OtherCollection:
    name: str
    model: str
    rows: int
    state: str  # "previous" (a rollback goes here), "building" (an unfinished migration), or "old"


def other_collections(store: MilvusStore) -> list[OtherCollection]:
    """The name's collections it does not point to, with what they hold: what ``imgsearch drop --old`` removes."""
    current = store.target()
    previous = store.properties_of(current).get(PREVIOUS_PROPERTY, "") if current else ""
    found = []
    for name in store.others():
        properties = store.properties_of(name)
        pinned = store.pinned(name)
        try:
            rows = pinned.count()
        finally:
            pinned.close()
        state = (
            "previous"
            if name == previous
            else "building"
            if properties.get(MIGRATION_PROPERTY) == "building"
            else "old"
        )
        found.append(OtherCollection(name, properties.get("imgsearch.model", "?"), rows, state))
    return found


def drop_others(store: MilvusStore, names: list[str], progress: Callable[[str], None] = lambda name: None) -> None:
    for name in names:
        store.drop_other(name)
        progress(name)

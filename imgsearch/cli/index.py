"""What fills and keeps the collection: ``imgsearch index``, ``imgsearch upgrade`` and ``imgsearch drop``."""

from __future__ import annotations

import argparse
import json
import sys

from imgsearch.cli.common import EXIT_ERROR, EXIT_OK, Command, confirmed, settings, show_progress, with_indexed_model
from imgsearch.cli.options import add_common, add_model_options
from imgsearch.errors import ImgsearchError


def _index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="folders or image files")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="drop what is indexed under a PATH that is now missing or empty (by default such a "
        "root is refused, since an unmounted share looks the same)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="say where the time went: reading, hashing, decoding, waiting for decode, embedding, writing",
    )
    parser.add_argument(
        "--batch-size", dest="batch_size", type=int, help="images per model batch [IMGSEARCH_BATCH_SIZE]"
    )
    parser.add_argument(
        "--decode-workers", dest="decode_workers", type=int, help="decoding threads [IMGSEARCH_DECODE_WORKERS]"
    )
    add_common(parser)
    add_model_options(parser)


def cmd_index(args: argparse.Namespace) -> int:
    from imgsearch.indexer.runner import check_roots_exist, run_index
    from imgsearch.model.embedder import model_identity
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore
    from imgsearch.store.lite import outgrown_advice

    config = settings(args)
    store = MilvusStore.from_settings(config)
    exists = store.exists()
    if not args.prune:  # a mistyped or unmounted path fails before the model loads
        check_roots_exist(args.paths, store.iter_metadata() if exists else [])
    if exists:
        config = with_indexed_model(args, config, store)
        store.check_model(model_identity(config.model))  # fail fast, before loading the model
    encoder = load_embedder(config)
    if (choice := getattr(encoder, "precision_choice", None)) is not None:
        print(f"imgsearch index: {choice.describe()}", file=sys.stderr)
    report = run_index(
        args.paths, config, encoder, store, show_progress=show_progress(args), prune=args.prune, profile=args.profile
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(
            f"scanned {report.scanned}, embedded {report.embedded}, unchanged {report.unchanged}, "
            f"moved {report.moved}, copied {report.copied}, removed {report.removed}, "
            f"failed {len(report.failed)} in {report.elapsed_s:.1f}s"
        )
        for failure in report.failed:
            print(f"  skipped {failure['path']}: {failure['reason']}")
        if report.text and "unavailable" in report.text:
            print(f"imgsearch index: {report.text['unavailable']}", file=sys.stderr)
        elif report.text:
            text = report.text
            print(
                f"read text in {text['read']} of {text['pending']} pictures: {text['with_text']} hold text, "
                f"{text['gated']} passed over as holding none, {text['failed']} unreadable, in {text['elapsed_s']:.1f}s"
            )
        if report.profile:
            from imgsearch.indexer.profile import format_profile

            print(format_profile(report.profile))
    for refusal in report.refused:
        print(f"imgsearch index: {refusal}", file=sys.stderr)
    if store.is_embedded and (advice := outgrown_advice(report.scanned - len(report.failed))):
        print(f"imgsearch index: {advice}", file=sys.stderr)  # at least this many: no count of the whole index
    if getattr(encoder, "needs_text_tuning", False):
        store.close()  # the index is written: another process may open it meanwhile
        print(
            "imgsearch index: measuring the text tower's settings, so that searches answer in milliseconds "
            "(once per model and machine; about 10 s)",
            file=sys.stderr,
        )
        try:
            print(f"imgsearch index: {encoder.tune_text().describe()}", file=sys.stderr)
        except (OSError, ImgsearchError) as exc:  # the index is written; searches load the whole model instead
            print(f"imgsearch index: could not measure the text tower: {exc}", file=sys.stderr)
    return EXIT_ERROR if report.refused else EXIT_OK


def _upgrade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_common(parser)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.indexer.upgrade import upgrade
    from imgsearch.store import MilvusStore

    config = settings(args)
    store = MilvusStore.from_settings(config)
    bar = None

    def show(done: int, total: int) -> None:
        nonlocal bar
        if args.json or not sys.stderr.isatty():
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="row", desc="upgrading", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        report = upgrade(store, config.max_file_bytes, on_progress=show)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(asdict(report)))
    elif report.from_version == report.to_version:
        print(f"collection '{config.collection}' already has schema version {report.to_version}: nothing to do")
    else:
        print(
            f"upgraded collection '{config.collection}' from schema version {report.from_version} to "
            f"{report.to_version}: {report.rows} rows copied, none embedded again; {report.dated_by_exif} dated "
            f"by EXIF, {report.files_unreadable} files gone or changed (dated by their file time); text in pictures "
            f"is read by the next imgsearch index, not embedded again "
            f"in {report.elapsed_s:.1f} s"
        )
    return EXIT_OK


def _drop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--old",
        action="store_true",
        help="delete only the collections the name no longer points to (the model before a migrate, "
        "an unfinished migration)",
    )
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_common(parser)


def cmd_drop(args: argparse.Namespace) -> int:
    from imgsearch.indexer.migration import drop_others, other_collections
    from imgsearch.store import MilvusStore

    config = settings(args)
    store = MilvusStore.from_settings(config)
    others = other_collections(store)
    if args.old:
        if not others:
            print(f"collection '{config.collection}' has no old collections")
            return EXIT_OK
        for other in others:
            print(f"  {other.name}: {other.rows} images embedded by {other.model} ({other.state})")
        if confirmed(args, f"Delete these {len(others)} collections?"):
            drop_others(store, [other.name for other in others], lambda name: print(f"dropped {name}"))
        return EXIT_OK
    if not store.exists():
        print(f"collection '{config.collection}' does not exist")
        return EXIT_OK
    kept = f" and its {len(others)} old collections" if others else ""
    if confirmed(args, f"Delete collection '{config.collection}' with {store.count()} images{kept}?"):
        store.drop()
        print(f"dropped collection '{config.collection}'{kept}")
    return EXIT_OK


COMMANDS = (
    Command("index", "embed the images under PATHs into the collection (incremental)", _index_arguments, cmd_index),
    Command(
        "upgrade",
        "bring a collection made by an older imgsearch to the current schema (nothing is embedded "
        "again; the old collection serves until the copy is complete)",
        _upgrade_arguments,
        cmd_upgrade,
    ),
    Command("drop", "delete the collection and everything indexed in it", _drop_arguments, cmd_drop),
)

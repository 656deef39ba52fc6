"""``imgsearch tag``: zero-shot tags from label sets, from the stored vectors."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from imgsearch.cli.common import EXIT_ERROR, EXIT_OK, Command, UsageError, settings, show_progress, with_indexed_model
from imgsearch.cli.options import add_common, add_model_options, choices


def _label_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The label set to store and tag with, and how it decides."""
    from dataclasses import fields

    from imgsearch.tagging.labels import DEFAULT_MIN_SCORE, DEFAULT_TEMPLATES, LabelSet, Mode

    top = next(field.default for field in fields(LabelSet) if field.name == "top")

    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="label file: one label per line, or YAML (a list, or a mapping with labels, templates, "
        "top, min_score, mode; a label may carry its own threshold and templates)",
    )
    parser.add_argument(
        "--name", help="the set's name (default: the file's name without extension); a set of the same name is replaced"
    )
    parser.add_argument("--top", type=int, help=f"at most this many labels of the set per image (default {top})")
    parser.add_argument(
        "--min-score",
        dest="min_score",
        type=float,
        help=f"keep a label only at this score or above (cosine similarity, default "
        f"{DEFAULT_MIN_SCORE['cosine']:g}; with --mode softmax a probability, default "
        f"{DEFAULT_MIN_SCORE['softmax']:g}); a label's own threshold wins",
    )
    parser.add_argument(
        "--mode",
        choices=choices(Mode),
        help="cosine: similarity of image and label; softmax: CLIP's classifier over the set's labels",
    )
    parser.add_argument(
        "--template",
        dest="templates",
        action="append",
        metavar="T",
        help=f"prompt template with {{}} for the label (default {DEFAULT_TEMPLATES[0]!r}); repeat to average several",
    )


def _tag_arguments(parser: argparse.ArgumentParser) -> None:
    _label_set_arguments(parser)
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="also write each label's top images with scores to DIR, as CSV and JSON",
    )
    parser.add_argument(
        "--export-top",
        dest="export_top",
        type=int,
        default=100,
        metavar="K",
        help="images per label in the export (default 100)",
    )
    parser.add_argument("--links", action="store_true", help="with --export: a folder of symlinks per label, to review")
    parser.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="count what the set would tag, write nothing (the export is still written)",
    )
    parser.add_argument("--list", dest="list_sets", action="store_true", help="list the stored label sets")
    parser.add_argument("--remove", metavar="NAME", help="forget a stored label set and take its tags off")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_common(parser)
    add_model_options(parser)


def _list_sets(args: argparse.Namespace, store: Any) -> int:
    from imgsearch.tagging.tagger import stored_label_sets

    sets = [
        {
            "name": s.name,
            "labels": len(s.labels),
            "mode": s.mode,
            "top": s.top,
            "min_score": s.cut,
            "templates": list(s.templates),
        }
        for s in stored_label_sets(store)
    ]
    if args.json:
        print(json.dumps(sets, indent=2))
        return EXIT_OK
    for s in sets:
        print(f"{s['name']}: {s['labels']} labels, {s['mode']}, top {s['top']}, min score {s['min_score']}")
    if not sets:
        print("no label sets; add one with: imgsearch tag --labels FILE")
    return EXIT_OK


def _print_report(args: argparse.Namespace, focus: Any, report: Any) -> None:
    what = f"label set '{focus.name}'" if focus else "the stored label sets" if report.label_sets else "no label sets"
    verb = "would change" if args.dry_run else "updated"
    print(
        f"tagged {report.images} images with {what}: {report.tagged} have tags, {verb} {report.updated} "
        f"in {report.elapsed_s:.1f} s"
    )
    for label, count in sorted(report.counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:7d}  {label}")
    if report.exported:
        print(f"exported the top {args.export_top} images of each label to {report.exported}")


def cmd_tag(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.errors import CollectionNotFoundError
    from imgsearch.model.embedder import model_identity
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore
    from imgsearch.tagging.jobs import Export, check_export_folder, remove_label_set, run_tagging, save_label_set
    from imgsearch.tagging.labels import load_label_file

    options = {"top": args.top, "min_score": args.min_score, "mode": args.mode, "templates": args.templates}
    if args.labels is None and (args.export or args.name or any(v is not None for v in options.values())):
        raise UsageError("--name, --top, --min-score, --mode, --template and --export need --labels FILE")
    if not 1 <= args.export_top <= 10_000:
        raise UsageError("--export-top must be between 1 and 10000")
    focus = load_label_file(args.labels, args.name, **options) if args.labels else None  # errors before the model
    if args.export:
        check_export_folder(args.export)  # before the set is stored
    config = settings(args)
    store = MilvusStore.from_settings(config)
    if not store.exists():
        raise CollectionNotFoundError(config.collection)
    if args.list_sets:
        return _list_sets(args, store)
    config = with_indexed_model(args, config, store)
    store.check_model(model_identity(config.model))  # an old schema or another model fails before loading
    if args.remove and not remove_label_set(store, args.remove):
        print(f"imgsearch tag: no label set named '{args.remove}'", file=sys.stderr)
        return EXIT_ERROR
    encoder = load_embedder(config)
    store.check_model(encoder.name, encoder.dim, encoder.fingerprint)
    if focus is not None and not args.dry_run:
        save_label_set(store, focus)
    export = Export(args.export, args.export_top, args.links) if args.export else None
    report = run_tagging(store, encoder, focus, export, dry_run=args.dry_run, show_progress=show_progress(args))
    if args.json:
        print(json.dumps(asdict(report), indent=2, ensure_ascii=False))
    else:
        _print_report(args, focus, report)
    return EXIT_OK


COMMANDS = (
    Command(
        "tag",
        "zero-shot tags: label every indexed image from a label set (no file is read again)",
        _tag_arguments,
        cmd_tag,
        description="Tag every indexed image with the labels of a label set that fit it, from the stored "
        "vectors. The set is stored with the collection: images indexed later get its tags too. "
        "Without --labels, tags every image again from the stored sets.",
    ),
)

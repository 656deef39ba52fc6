"""The ``imgsearch`` command: index folders, search from a terminal, serve the API, start the UI."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from imgsearch.errors import ImgsearchError, validation_message
from imgsearch.settings import Settings

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with command-line flags on top."""
    overrides = {name: value for name in ("milvus_uri", "collection", "model", "device", "precision", "backend",
                                          "batch_size",
                                          "decode_workers", "host", "port", "api_url")
                 if (value := getattr(args, name, None)) is not None}
    return Settings(**overrides)


def _with_indexed_model(args: argparse.Namespace, settings: Settings, store) -> Settings:
    """``settings`` with the model that made the collection, unless one was given (flag or environment):
    queries and label texts must be embedded by it."""
    from imgsearch.store.catalogue import NOT_IMGSEARCH

    recorded = store.model_info()[0]
    if args.model is None and "IMGSEARCH_MODEL" not in os.environ and recorded != NOT_IMGSEARCH:
        return settings.model_copy(update={"model": recorded})
    return settings


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--milvus-uri", dest="milvus_uri", help="Milvus Lite dir (*.db) or server URI [IMGSEARCH_MILVUS_URI]")
    parser.add_argument("--collection", help="collection name [IMGSEARCH_COLLECTION]")
    parser.add_argument("--model", help="a model name or local directory, IMAGE+TEXT for a pair, hf-hub:NAME for open_clip; "
                             "`imgsearch models` lists known ones [IMGSEARCH_MODEL]")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 or auto [IMGSEARCH_DEVICE]")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """For the commands that run the model."""
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8", "fp16"],
                        help="how the model runs (auto: the fastest that agrees with fp32) [IMGSEARCH_PRECISION]")
    parser.add_argument("--backend", choices=["auto", "torch", "onnx", "openvino"],
                        help="what runs the model; onnx and openvino need their extras (auto: with --precision auto, "
                             "the fastest installed one that agrees with fp32; else torch) [IMGSEARCH_BACKEND]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description="Semantic image search on Milvus.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="embed the images under PATHs into the collection (incremental)")
    index.add_argument("paths", nargs="+", metavar="PATH", help="folders or image files")
    index.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    index.add_argument("--prune", action="store_true",
                       help="drop what is indexed under a PATH that is now missing or empty (by default such a "
                            "root is refused, since an unmounted share looks the same)")
    index.add_argument("--profile", action="store_true",
                       help="say where the time went: reading, hashing, decoding, waiting for decode, embedding, writing")
    index.add_argument("--batch-size", dest="batch_size", type=int, help="images per model batch [IMGSEARCH_BATCH_SIZE]")
    index.add_argument("--decode-workers", dest="decode_workers", type=int, help="decoding threads [IMGSEARCH_DECODE_WORKERS]")
    _add_common(index)
    _add_model_options(index)

    search = commands.add_parser("search", help="search by text or by an example image")
    search.add_argument("query", nargs="*", metavar="TERM", help=(
        "what to look for: words, image files, or both joined by + and - as separate arguments, each with an "
        "optional weight: '2:golden retriever' + ./pool.jpg - fruit. Text in double quotes inside the "
        "argument ('\"IMG_2041\"') matches file and folder names only"))
    search.add_argument("--image", type=Path, help="an example image file (the same as giving its path as a term)")
    search.add_argument("--cutoff", choices=["auto", "none"], default="none",
                        help="auto: stop where this query's relevant results end")
    search.add_argument("--collapse", nargs="?", type=float, const=0.95, metavar="T",
                        help="fold near-identical results (cosine >= T, default 0.95) into one")
    search.add_argument("--diversity", type=float, default=0.0, metavar="D",
                        help="0..1: re-rank for variety (maximal marginal relevance)")
    search.add_argument("--hybrid", nargs="?", type=float, const=0.5, metavar="W",
                        help="also match file, folder and sidecar text (BM25), weight W 0..1 (default 0.5)")
    search.add_argument("--explain", action="store_true", help="show what each term adds to each score")
    search.add_argument("-k", "--limit", type=int, default=10, help="how many results (default 10)")
    search.add_argument("--json", action="store_true", help="print JSON on stdout")
    search.add_argument("--after", dest="taken_after", metavar="DATE", help="taken at or after (2019-06-01, 2019-06-01T18:00)")
    search.add_argument("--before", dest="taken_before", metavar="DATE", help="taken before this date or time")
    search.add_argument("--format", dest="formats", action="append", metavar="FORMAT",
                        help="only this file format (JPEG, PNG, HEIF ...); repeat for several")
    search.add_argument("--camera", dest="cameras", action="append", metavar="MODEL",
                        help="only this camera model, as EXIF names it (X100V); repeat for several")
    search.add_argument("--path-prefix", dest="path_prefix", metavar="PREFIX", help="only paths that start with this")
    search.add_argument("--tag", dest="tags_any", action="append", metavar="TAG",
                        help="only images with this tag (imgsearch tag); repeat for any of several")
    search.add_argument("--all-tags", dest="tags_all", action="append", metavar="TAG",
                        help="only images with this tag; repeat: with every one of them")
    search.add_argument("--newest", action="store_true", help="newest photo first, among the 1,000 best matches")
    _add_common(search)
    _add_model_options(search)

    serve = commands.add_parser("serve", help="start the HTTP search API")
    serve.add_argument("--host", help="bind address [IMGSEARCH_HOST] (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port [IMGSEARCH_PORT] (default 8000)")
    _add_common(serve)
    _add_model_options(serve)

    ui = commands.add_parser("ui", help="start the Streamlit web UI (talks to the API)")
    ui.add_argument("--api-url", dest="api_url", help="search API address [IMGSEARCH_API_URL]")
    ui.add_argument("--port", type=int, default=8501, help="UI port (default 8501)")
    ui.add_argument("--host", dest="ui_host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 exposes the UI "
                         "to the network)")

    upgrade = commands.add_parser(
        "upgrade", help="bring a collection made by an older imgsearch to the current schema (nothing is embedded "
                        "again; the old collection serves until the copy is complete)")
    upgrade.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_common(upgrade)

    tag = commands.add_parser(
        "tag", help="zero-shot tags: label every indexed image from a label set (no file is read again)",
        description="Tag every indexed image with the labels of a label set that fit it, from the stored vectors. "
                    "The set is stored with the collection: images indexed later get its tags too. Without "
                    "--labels, tags every image again from the stored sets.")
    tag.add_argument("--labels", type=Path, metavar="FILE",
                     help="label file: one label per line, or YAML (a list, or a mapping with labels, templates, "
                          "top, min_score, mode; a label may carry its own threshold and templates)")
    tag.add_argument("--name", help="the set's name (default: the file's name without extension); a set of the "
                                    "same name is replaced")
    tag.add_argument("--top", type=int, help="at most this many labels of the set per image (default 3)")
    tag.add_argument("--min-score", dest="min_score", type=float,
                     help="keep a label only at this score or above (cosine similarity, default 0.25; with "
                          "--mode softmax a probability, default 0.1); a label's own threshold wins")
    tag.add_argument("--mode", choices=["cosine", "softmax"],
                     help="cosine: similarity of image and label; softmax: CLIP's classifier over the set's labels")
    tag.add_argument("--template", dest="templates", action="append", metavar="T",
                     help="prompt template with {} for the label (default 'a photo of a {}.'); repeat to average several")
    tag.add_argument("--export", type=Path, metavar="DIR",
                     help="also write each label's top images with scores to DIR, as CSV and JSON")
    tag.add_argument("--export-top", dest="export_top", type=int, default=100, metavar="K",
                     help="images per label in the export (default 100)")
    tag.add_argument("--links", action="store_true", help="with --export: a folder of symlinks per label, to review")
    tag.add_argument("--dry-run", dest="dry_run", action="store_true",
                     help="count what the set would tag, write nothing (the export is still written)")
    tag.add_argument("--list", dest="list_sets", action="store_true", help="list the stored label sets")
    tag.add_argument("--remove", metavar="NAME", help="forget a stored label set and take its tags off")
    tag.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_common(tag)
    _add_model_options(tag)

    duplicates = commands.add_parser("duplicates", help="list groups of near-identical images in the collection")
    duplicates.add_argument("--threshold", type=float, default=0.95, help="cosine at which two images count as one")
    duplicates.add_argument("--json", action="store_true", help="print JSON on stdout")
    _add_common(duplicates)

    evaluate = commands.add_parser(
        "evaluate", help="score models on your own labelled images, side by side, to choose one",
        description="Zero-shot accuracy (top-1, top-5, mean per-class recall) and leave-one-out kNN accuracy on a "
                    "folder of class subfolders; text->image and image->text recall@1/5/10 on a CSV of "
                    "image,caption rows. Image vectors are cached per model, so adding a model embeds only for it.")
    evaluate.add_argument("--folder", metavar="DIR", help="one subfolder of images per class; its name is the class")
    evaluate.add_argument("--captions", metavar="CSV", help="image,caption rows; image paths relative to the CSV")
    evaluate.add_argument("--model", dest="models", action="append", metavar="MODEL",
                          help="a model to score (repeat for more); default: IMGSEARCH_MODEL")
    evaluate.add_argument("--template", dest="templates", action="append", metavar="TEXT",
                          help="prompt template, {} is the class name (repeat to average several); "
                               "default: 'a photo of a {}.'")
    evaluate.add_argument("--knn", type=int, default=1, metavar="K", help=(
        "neighbours that vote in the kNN accuracy (default 1: is each image's nearest other image of its class?)"))
    evaluate.add_argument("--chart", metavar="PNG", help="also draw the comparison as a bar chart (needs [eval])")
    evaluate.add_argument("--json", action="store_true", help="print JSON on stdout")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1 or auto [IMGSEARCH_DEVICE]")
    _add_model_options(evaluate)

    models = commands.add_parser(
        "models", help="list the models imgsearch knows by name, with their speed on this machine",
        description="Known presets: family, vector size, input size, what each is good for, licence, and img/s and "
                    "text-query ms as bench/model_speed.py measured them. Any other model name or directory works "
                    "too; `imgsearch evaluate` compares them on your images.")
    models.add_argument("--json", action="store_true", help="print JSON on stdout")

    migrate = commands.add_parser(
        "migrate", help="switch the collection to another model while the API keeps answering",
        description="Build a collection with the new model beside the current one, from the indexed folders "
                    "(resumable: run it again after an interruption), then point the collection's name at it in one "
                    "step. A running API follows within seconds. The old collection is kept for --rollback until "
                    "`imgsearch drop --old`.")
    migrate.add_argument("--rollback", action="store_true",
                         help="point the name back at the collection it pointed to before the last switch")
    migrate.add_argument("--allow-missing", dest="allow_missing", action="store_true",
                         help="switch even if images of the old collection were not found again (their files gone "
                              "or unreadable); without it such a migration builds but does not switch")
    migrate.add_argument("--build-only", dest="build_only", action="store_true",
                         help="build (or finish building) the new collection, but do not switch to it")
    migrate.add_argument("--folder", metavar="DIR",
                         help="before switching, evaluate both models on this folder of class subfolders")
    migrate.add_argument("--captions", metavar="CSV", help="... and/or on these image,caption rows")
    migrate.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    _add_common(migrate)
    _add_model_options(migrate)

    drop = commands.add_parser("drop", help="delete the collection and everything indexed in it")
    drop.add_argument("--old", action="store_true",
                      help="delete only the collections the name no longer points to (the model before a migrate, "
                           "an unfinished migration)")
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _add_common(drop)
    return parser


def cmd_index(args: argparse.Namespace) -> int:
    from imgsearch.indexer.runner import check_roots_exist, run_index
    from imgsearch.model.embedder import model_identity
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore

    settings = _settings(args)
    store = MilvusStore.from_settings(settings)
    exists = store.exists()
    if not args.prune:  # a mistyped or unmounted path fails before the model loads
        check_roots_exist(args.paths, store.iter_metadata() if exists else [])
    if exists:
        settings = _with_indexed_model(args, settings, store)
        store.check_model(model_identity(settings.model))  # fail fast, before loading the model
    encoder = load_embedder(settings)
    if (choice := getattr(encoder, "precision_choice", None)) is not None:
        print(f"imgsearch index: {choice.describe()}", file=sys.stderr)
    report = run_index(args.paths, settings, encoder, store, show_progress=sys.stderr.isatty() and not args.json,
                       prune=args.prune, profile=args.profile)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"scanned {report.scanned}, embedded {report.embedded}, unchanged {report.unchanged}, "
              f"moved {report.moved}, copied {report.copied}, removed {report.removed}, "
              f"failed {len(report.failed)} in {report.elapsed_s:.1f}s")
        for failure in report.failed:
            print(f"  skipped {failure['path']}: {failure['reason']}")
        if report.profile:
            from imgsearch.indexer.profile import format_profile

            print(format_profile(report.profile))
    for refusal in report.refused:
        print(f"imgsearch index: {refusal}", file=sys.stderr)
    return EXIT_ERROR if report.refused else EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    import asyncio

    from imgsearch.media.images import decode_image
    from imgsearch.model.loading import load_embedder
    from imgsearch.search.batching import TextBatcher
    from imgsearch.search.query_expression import QueryExpressionError, parse_expression
    from imgsearch.search.requests import SearchRequest
    from imgsearch.search.service import SearchService
    from imgsearch.store import MilvusStore
    from imgsearch.store.fields import SearchFilter

    try:
        terms = parse_expression(list(args.query))
    except QueryExpressionError as exc:
        print(f"imgsearch search: {exc}", file=sys.stderr)
        return EXIT_USAGE
    images = [term.value for term in terms if term.kind == "image"] + ([str(args.image)] if args.image else [])
    if not terms and not args.image:
        print("imgsearch search: give a query (text, image files, joined by + and -) or --image PATH", file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.limit <= 200:
        print("imgsearch search: -k must be between 1 and 200", file=sys.stderr)
        return EXIT_USAGE
    # The request first: a bad date or option is told before the model loads.
    bounds = {name: getattr(args, name) for name in ("taken_after", "taken_before", "formats", "cameras", "path_prefix",
                                                     "tags_any", "tags_all")}
    request_terms = [{"text": term.value, "weight": term.weight} if term.kind == "text"
                     else {"upload_ref": str(images.index(term.value)), "weight": term.weight} for term in terms]
    request = SearchRequest.model_validate({
        "terms": request_terms, "limit": args.limit, "sort": "newest" if args.newest else "relevance",
        "filter": SearchFilter(**{k: v for k, v in bounds.items() if v is not None}),
        "cutoff": args.cutoff, "collapse": args.collapse is not None,
        "collapse_threshold": args.collapse or 0.95, "diversity": args.diversity,
        "lexical_weight": args.hybrid or 0.0, "explain": args.explain,
    }, context={"has_upload": bool(images)})
    settings = _settings(args)
    store = MilvusStore.from_settings(settings)
    settings = _with_indexed_model(args, settings, store)
    encoder = load_embedder(settings)  # SearchService checks the collection's model and weights against it
    uploads = [(path, decode_image(Path(path).read_bytes(), path, encoder.image_size, settings.max_image_pixels,
                                   settings.max_decoded_bytes)) for path in images]
    batcher = TextBatcher(encoder)
    try:
        response = asyncio.run(SearchService(encoder, store, batcher).search(request, uploads=uploads))
    finally:
        batcher.close()
    for note in response.notes:
        print(f"note: {note}", file=sys.stderr)
    if response.cutoff is not None:
        cut = response.cutoff
        print(f"cutoff: {cut.kept} matches ({cut.z:.1f} standard deviations above the collection"
              + (", cut at a gap" if cut.knee else "") + ")", file=sys.stderr)
    hits = response.results
    if args.json:  # the results as a list; the cutoff and notes went to stderr above
        print(json.dumps([hit.model_dump(mode="json", exclude_none=True) for hit in hits], indent=2))
        return EXIT_OK
    if not hits and any(value is not None for value in bounds.values()):
        print("no results match the filters (--after, --before, --format, --camera, --path-prefix, --tag, --all-tags)")
    elif not hits and args.cutoff == "auto":
        print("nothing in the collection stands out for this query (cutoff auto); try without --cutoff")
    elif not hits:
        print("no results (is anything indexed? run: imgsearch index PATH)")
    for hit in hits:
        extra = f"  [{', '.join(hit.tags)}]" if hit.tags else ""
        extra += f"  (+{len(hit.duplicates)} similar)" if hit.duplicates else ""
        extra += "  (name match)" if hit.name_match else ""
        print(f"{hit.score:6.3f}  {hit.path}{extra}")
        for folded in hit.folded:
            print(f"        similar: {folded.path}")
        for part in hit.explanation or []:
            detail = (f"cosine {part.cosine:+.3f} x weight {part.weight:+g} -> {part.contribution:+.3f}"
                      if part.cosine is not None else
                      f"name match rank {part.name_rank}" if part.name_rank else "no name match")
            print(f"        {part.term}: {detail}")
    return EXIT_OK


def cmd_duplicates(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.search.duplicates import find_duplicates
    from imgsearch.store import MilvusStore

    if not 0.5 <= args.threshold <= 1.0:
        print("imgsearch duplicates: --threshold must be between 0.5 and 1", file=sys.stderr)
        return EXIT_USAGE
    store = MilvusStore.from_settings(_settings(args))
    store.check_schema()
    report = find_duplicates(store, args.threshold)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return EXIT_OK
    for group in report.groups:
        first, *others = group.images
        print(first.path)
        for member in others:
            print(f"  {member.similarity:.4f}  {member.path}  ({member.why})")
    print(f"{len(report.groups)} groups of near-identical images among {report.images} "
          f"(cosine >= {report.threshold})", file=sys.stderr)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imgsearch.evaluation import report
    from imgsearch.evaluation.runner import DEFAULT_TEMPLATES, evaluate_model, image_paths
    from imgsearch.model.loading import load_embedder

    if not (args.folder or args.captions):
        print("imgsearch evaluate: give --folder DIR (class subfolders) and/or --captions CSV", file=sys.stderr)
        return EXIT_USAGE
    templates = args.templates or list(DEFAULT_TEMPLATES)
    if any(template.count("{}") != 1 for template in templates):
        print("imgsearch evaluate: each --template needs exactly one {} where the class name goes", file=sys.stderr)
        return EXIT_USAGE
    if args.knn < 1:
        print("imgsearch evaluate: --knn must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    folder, captions = _labelled_data(args)
    settings = _settings(args)
    images = len(image_paths(folder, captions))
    results = []
    for model in args.models or [settings.model]:
        embedder = load_embedder(settings.model_copy(update={"model": model}))
        with tqdm(total=images, desc=report.short_name(embedder.name), unit="img", file=sys.stderr,
                  disable=None) as bar:  # disable=None: a bar on a terminal only
            result = evaluate_model(embedder, folder, captions, settings, templates, args.knn, progress=bar.update)
        results.append(result)
        del embedder  # one model in memory at a time
        for path, why in list(result.skipped.items())[:5]:
            print(f"skipped {path}: {why}", file=sys.stderr)
    if args.chart:
        print(f"chart: {report.chart(results, Path(args.chart))}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_json(results), indent=2))
    else:
        print(report.table(results))
    return EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.errors import CollectionNotFoundError
    from imgsearch.model.embedder import model_identity
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore
    from imgsearch.tagging.jobs import Export, check_export_folder, remove_label_set, run_tagging, save_label_set
    from imgsearch.tagging.labels import load_label_file
    from imgsearch.tagging.tagger import stored_label_sets

    options = {"top": args.top, "min_score": args.min_score, "mode": args.mode, "templates": args.templates}
    if args.labels is None and (args.export or args.name or any(v is not None for v in options.values())):
        print("imgsearch tag: --name, --top, --min-score, --mode, --template and --export need --labels FILE",
              file=sys.stderr)
        return EXIT_USAGE
    if not 1 <= args.export_top <= 10_000:
        print("imgsearch tag: --export-top must be between 1 and 10000", file=sys.stderr)
        return EXIT_USAGE
    focus = load_label_file(args.labels, args.name, **options) if args.labels else None  # errors before the model
    if args.export:
        check_export_folder(args.export)  # before the set is stored
    settings = _settings(args)
    store = MilvusStore.from_settings(settings)
    if not store.exists():
        raise CollectionNotFoundError(settings.collection)
    if args.list_sets:
        sets = [{"name": s.name, "labels": len(s.labels), "mode": s.mode, "top": s.top, "min_score": s.cut,
                 "templates": list(s.templates)} for s in stored_label_sets(store)]
        if args.json:
            print(json.dumps(sets, indent=2))
        for s in [] if args.json else sets:
            print(f"{s['name']}: {s['labels']} labels, {s['mode']}, top {s['top']}, min score {s['min_score']}")
        if not sets and not args.json:
            print("no label sets; add one with: imgsearch tag --labels FILE")
        return EXIT_OK
    settings = _with_indexed_model(args, settings, store)
    store.check_model(model_identity(settings.model))  # an old schema or another model fails before loading
    if args.remove and not remove_label_set(store, args.remove):
        print(f"imgsearch tag: no label set named '{args.remove}'", file=sys.stderr)
        return EXIT_ERROR
    encoder = load_embedder(settings)
    store.check_model(encoder.name, encoder.dim, encoder.fingerprint)
    if focus is not None and not args.dry_run:
        save_label_set(store, focus)
    export = Export(args.export, args.export_top, args.links) if args.export else None
    report = run_tagging(store, encoder, focus, export, dry_run=args.dry_run,
                         show_progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print(json.dumps(asdict(report), indent=2, ensure_ascii=False))
        return EXIT_OK
    what = f"label set '{focus.name}'" if focus else "the stored label sets" if report.label_sets else "no label sets"
    verb = "would change" if args.dry_run else "updated"
    print(f"tagged {report.images} images with {what}: {report.tagged} have tags, {verb} {report.updated} "
          f"in {report.elapsed_s:.1f} s")
    for label, count in sorted(report.counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {count:7d}  {label}")
    if report.exported:
        print(f"exported the top {args.export_top} images of each label to {report.exported}")
    return EXIT_OK


def cmd_drop(args: argparse.Namespace) -> int:
    from imgsearch.indexer.migration import drop_others, other_collections
    from imgsearch.store import MilvusStore

    settings = _settings(args)
    store = MilvusStore.from_settings(settings)
    others = other_collections(store)
    if args.old:
        if not others:
            print(f"collection '{settings.collection}' has no old collections")
            return EXIT_OK
        for other in others:
            print(f"  {other.name}: {other.rows} images embedded by {other.model} ({other.state})")
        if not _confirmed(args, f"Delete these {len(others)} collections?"):
            return EXIT_OK
        drop_others(store, [other.name for other in others], lambda name: print(f"dropped {name}"))
        return EXIT_OK
    if not store.exists():
        print(f"collection '{settings.collection}' does not exist")
        return EXIT_OK
    kept = f" and its {len(others)} old collections" if others else ""
    if not _confirmed(args, f"Delete collection '{settings.collection}' with {store.count()} images{kept}?"):
        return EXIT_OK
    store.drop()
    print(f"dropped collection '{settings.collection}'{kept}")
    return EXIT_OK


def _confirmed(args: argparse.Namespace, question: str) -> bool:
    """--yes, or a yes typed on a terminal; without a terminal, refuse (SystemExit with EXIT_USAGE)."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        print(f"imgsearch {args.command}: refusing without --yes when not on a terminal", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.model.presets import PRESETS, SPEED_FILE, measured_speeds, table

    speeds = measured_speeds()
    if args.json:
        print(json.dumps({"presets": [asdict(preset) for preset in PRESETS], "speeds": speeds}, indent=2))
        return EXIT_OK
    print(table(PRESETS, speeds))
    if speeds:
        machine = speeds.get("machine", {})
        print(f"\nimg/s: images per second through the model alone ({speeds.get('precision', 'fp32')}, batch "
              f"{speeds.get('batch_size', '?')}, {speeds.get('threads', '?')} threads); text ms: one short query. "
              f"Measured {speeds.get('measured', '?')} on {machine.get('cpu_model', '?')} x{machine.get('cpu_count', '?')} "
              f"(flags: {' '.join(machine.get('cpu_flags', [])) or 'none of note'}) with random weights of each "
              f"architecture, by python bench/model_speed.py; run it again to measure this machine.")
    else:
        print(f"\nNo speeds: {SPEED_FILE} is missing; python bench/model_speed.py measures them.")
    print("[openclip]: needs pip install 'imgsearch[openclip]'. Any other sentence-transformers name, Hugging Face "
          "CLIP or SigLIP checkpoint, local directory, or IMAGE_MODEL+TEXT_MODEL pair works too.")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.indexer import migration
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore

    settings = _settings(args)
    store = MilvusStore.from_settings(settings)
    if args.rollback:
        left, now = migration.rollback(store)
        print(f"'{settings.collection}' points to {now} again ({store.model_info()[0]}); {left} is kept: "
              f"`imgsearch migrate --rollback` switches back to it")
        return EXIT_OK
    if args.model is None:
        print("imgsearch migrate: give --model NEW (or --rollback)", file=sys.stderr)
        return EXIT_USAGE
    if not store.exists():
        print(f"imgsearch migrate: collection '{settings.collection}' does not exist: `imgsearch index` makes it "
              f"with IMGSEARCH_MODEL", file=sys.stderr)
        return EXIT_ERROR
    store.check_schema()  # an old schema is upgraded first, before a model is loaded
    labelled = _labelled_data(args)  # bad evaluation data fails now, not after the build
    encoder = load_embedder(settings)
    show = sys.stderr.isatty() and not args.json
    if not args.json:
        print(f"embedding the images of '{settings.collection}' with {encoder.name} into a new collection",
              file=sys.stderr)
    report = migration.build(settings, encoder, store, show_progress=show)
    if labelled:
        _compare_models(args, settings, labelled, [report.old_model, encoder.name], encoder)
    if not args.build_only:
        migration.switch(store, report, allow_missing=args.allow_missing)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
        return EXIT_OK
    build, catch_up = report.build, report.catch_up
    print(f"{report.new}: embedded {build.embedded + catch_up.embedded}, already there {build.unchanged}, "
          f"copied {build.copied + catch_up.copied}, failed {len(build.failed)}; {report.rows_after} images "
          f"(the old collection has {report.rows_before})" + (" (resumed)" if report.resumed else ""))
    for failure in build.failed[:20]:
        print(f"  skipped {failure['path']}: {failure['reason']}")
    if report.not_carried:
        print(f"{len(report.not_carried)} images of the old collection are not in the new one (their files are "
              f"gone or unreadable now), e.g. {report.not_carried[0]}; they stay in {report.old} until it is dropped")
    if report.switched:
        print(f"'{settings.collection}' now points to {report.new} ({report.model}); a running API follows within "
              f"seconds. {report.old} ({report.old_model}) is kept: `imgsearch migrate --rollback` goes back, "
              f"`imgsearch drop --old` deletes it.")
    else:
        print(f"built {report.new}; '{settings.collection}' still points to {report.old}. Run the same command "
              f"without --build-only to switch.")
    return EXIT_OK


def _labelled_data(args: argparse.Namespace) -> tuple | None:
    """The class folder and caption CSV of --folder / --captions, read: (folder, captions), or None."""
    from imgsearch.evaluation.data import read_captions, read_class_folder

    if not (args.folder or args.captions):
        return None
    return (read_class_folder(args.folder) if args.folder else None,
            read_captions(args.captions) if args.captions else None)


def _compare_models(args: argparse.Namespace, settings: Settings, labelled: tuple, models: list[str], loaded) -> None:
    """Evaluate ``models`` on the labelled images and print the table."""
    from imgsearch.evaluation import report
    from imgsearch.evaluation.runner import DEFAULT_TEMPLATES, evaluate_model
    from imgsearch.model.loading import load_embedder

    folder, captions = labelled
    results = []
    for model in models:
        embedder = loaded if model == loaded.name else load_embedder(settings.model_copy(update={"model": model}))
        results.append(evaluate_model(embedder, folder, captions, settings, list(DEFAULT_TEMPLATES)))
        del embedder
    print(report.table(results), file=sys.stderr if args.json else sys.stdout)


def cmd_upgrade(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.indexer.upgrade import upgrade
    from imgsearch.store import MilvusStore

    settings = _settings(args)
    store = MilvusStore.from_settings(settings)
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
        report = upgrade(store, settings.max_file_bytes, on_progress=show)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(asdict(report)))
    elif report.from_version == report.to_version:
        print(f"collection '{settings.collection}' already has schema version {report.to_version}: nothing to do")
    else:
        print(f"upgraded collection '{settings.collection}' from schema version {report.from_version} to "
              f"{report.to_version}: {report.rows} rows copied, none embedded again; {report.dated_by_exif} dated "
              f"by EXIF, {report.files_unreadable} files gone or changed (dated by their file time) "
              f"in {report.elapsed_s:.1f} s")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from imgsearch.search_api.main import serve

    serve(_settings(args))
    return EXIT_OK


def cmd_ui(args: argparse.Namespace) -> int:
    from imgsearch.ui.launch import launch

    launch(_settings(args), port=args.port, address=args.ui_host)  # replaces this process; never returns


COMMANDS = {"index": cmd_index, "search": cmd_search, "serve": cmd_serve, "ui": cmd_ui, "upgrade": cmd_upgrade,
            "tag": cmd_tag, "drop": cmd_drop, "duplicates": cmd_duplicates, "evaluate": cmd_evaluate,
            "migrate": cmd_migrate, "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ImgsearchError as exc:
        print(f"imgsearch {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # pydantic ValidationError for bad settings, OS errors
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):  # one line per field, not pydantic's block with a link
            print(f"imgsearch {args.command}: error: {validation_message(exc.errors())}", file=sys.stderr)
            return EXIT_ERROR
        if isinstance(exc, OSError):
            print(f"imgsearch {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())

"""Choosing and changing the model: ``imgsearch models``, ``imgsearch evaluate`` and ``imgsearch migrate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgsearch.cli.common import EXIT_ERROR, EXIT_OK, Command, UsageError, settings, show_progress
from imgsearch.cli.options import add_common, add_device, add_model_options

if TYPE_CHECKING:
    from imgsearch.settings import Settings


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")


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
        print(
            f"\nimg/s: images per second through the model alone ({speeds.get('precision', 'fp32')}, batch "
            f"{speeds.get('batch_size', '?')}, {speeds.get('threads', '?')} threads); text ms: one short query. "
            f"Measured {speeds.get('measured', '?')} on {machine.get('cpu_model', '?')} "
            f"x{machine.get('cpu_count', '?')} (flags: {' '.join(machine.get('cpu_flags', [])) or 'none of note'}) "
            f"with random weights of each architecture, by python bench/model_speed.py; run it again to measure "
            f"this machine."
        )
    else:
        print(f"\nNo speeds: {SPEED_FILE} is missing; python bench/model_speed.py measures them.")
    print(
        "[openclip]: needs pip install 'imgsearch[openclip]'. Any other sentence-transformers name, Hugging Face "
        "CLIP or SigLIP checkpoint, local directory, or IMAGE_MODEL+TEXT_MODEL pair works too."
    )
    return EXIT_OK


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from imgsearch.evaluation.runner import DEFAULT_TEMPLATES

    parser.add_argument("--folder", metavar="DIR", help="one subfolder of images per class; its name is the class")
    parser.add_argument("--captions", metavar="CSV", help="image,caption rows; image paths relative to the CSV")
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="MODEL",
        help="a model to score (repeat for more); default: IMGSEARCH_MODEL",
    )
    parser.add_argument(
        "--template",
        dest="templates",
        action="append",
        metavar="TEXT",
        help=f"prompt template, {{}} is the class name (repeat to average several); default: {DEFAULT_TEMPLATES[0]!r}",
    )
    parser.add_argument(
        "--knn",
        type=int,
        default=1,
        metavar="K",
        help=(
            "neighbours that vote in the kNN accuracy (default 1: is each image's nearest other image of its class?)"
        ),
    )
    parser.add_argument("--chart", metavar="PNG", help="also draw the comparison as a bar chart (needs [eval])")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_device(parser)
    add_model_options(parser)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imgsearch.evaluation import report
    from imgsearch.evaluation.runner import DEFAULT_TEMPLATES, evaluate_model, image_paths
    from imgsearch.model.loading import load_embedder

    if not (args.folder or args.captions):
        raise UsageError("give --folder DIR (class subfolders) and/or --captions CSV")
    templates = args.templates or list(DEFAULT_TEMPLATES)
    if any(template.count("{}") != 1 for template in templates):
        raise UsageError("each --template needs exactly one {} where the class name goes")
    if args.knn < 1:
        raise UsageError("--knn must be 1 or more")
    folder, captions = _labelled_data(args)
    config = settings(args)
    images = len(image_paths(folder, captions))
    results = []
    for model in args.models or [config.model]:
        embedder = load_embedder(config.model_copy(update={"model": model}))
        with tqdm(
            total=images, desc=report.short_name(embedder.name), unit="img", file=sys.stderr, disable=None
        ) as bar:  # disable=None: a bar on a terminal only
            result = evaluate_model(embedder, folder, captions, config, templates, args.knn, progress=bar.update)
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


def _labelled_data(args: argparse.Namespace) -> tuple | None:
    """The class folder and caption CSV of --folder / --captions, read: (folder, captions), or None."""
    from imgsearch.evaluation.data import read_captions, read_class_folder

    if not (args.folder or args.captions):
        return None
    return (
        read_class_folder(args.folder) if args.folder else None,
        read_captions(args.captions) if args.captions else None,
    )


def _compare_models(
    args: argparse.Namespace, config: Settings, labelled: tuple, models: list[str], loaded: Any
) -> None:
    """Evaluate ``models`` on the labelled images and print the table."""
    from imgsearch.evaluation import report
    from imgsearch.evaluation.runner import DEFAULT_TEMPLATES, evaluate_model
    from imgsearch.model.loading import load_embedder

    folder, captions = labelled
    results = []
    for model in models:
        embedder = loaded if model == loaded.name else load_embedder(config.model_copy(update={"model": model}))
        results.append(evaluate_model(embedder, folder, captions, config, list(DEFAULT_TEMPLATES)))
        del embedder
    print(report.table(results), file=sys.stderr if args.json else sys.stdout)


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rollback",
        action="store_true",
        help="point the name back at the collection it pointed to before the last switch",
    )
    parser.add_argument(
        "--allow-missing",
        dest="allow_missing",
        action="store_true",
        help="switch even if images of the old collection were not found again (their files gone "
        "or unreadable); without it such a migration builds but does not switch",
    )
    parser.add_argument(
        "--build-only",
        dest="build_only",
        action="store_true",
        help="build (or finish building) the new collection, but do not switch to it",
    )
    parser.add_argument(
        "--folder", metavar="DIR", help="before switching, evaluate both models on this folder of class subfolders"
    )
    parser.add_argument("--captions", metavar="CSV", help="... and/or on these image,caption rows")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_common(parser)
    add_model_options(parser)


def _print_migration(config: Settings, report: Any) -> None:
    build, catch_up = report.build, report.catch_up
    print(
        f"{report.new}: embedded {build.embedded + catch_up.embedded}, already there {build.unchanged}, "
        f"copied {build.copied + catch_up.copied}, failed {len(build.failed)}; {report.rows_after} images "
        f"(the old collection has {report.rows_before})" + (" (resumed)" if report.resumed else "")
    )
    for failure in build.failed[:20]:
        print(f"  skipped {failure['path']}: {failure['reason']}")
    if report.not_carried:
        print(
            f"{len(report.not_carried)} images of the old collection are not in the new one (their files are "
            f"gone or unreadable now), e.g. {report.not_carried[0]}; they stay in {report.old} until it is dropped"
        )
    if report.switched:
        print(
            f"'{config.collection}' now points to {report.new} ({report.model}); a running API follows within "
            f"seconds. {report.old} ({report.old_model}) is kept: `imgsearch migrate --rollback` goes back, "
            f"`imgsearch drop --old` deletes it."
        )
    else:
        print(
            f"built {report.new}; '{config.collection}' still points to {report.old}. Run the same command "
            f"without --build-only to switch."
        )


def cmd_migrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from imgsearch.indexer import migration
    from imgsearch.model.loading import load_embedder
    from imgsearch.store import MilvusStore

    config = settings(args)
    store = MilvusStore.from_settings(config)
    if args.rollback:
        left, now = migration.rollback(store)
        print(
            f"'{config.collection}' points to {now} again ({store.model_info()[0]}); {left} is kept: "
            f"`imgsearch migrate --rollback` switches back to it"
        )
        return EXIT_OK
    if args.model is None:
        raise UsageError("give --model NEW (or --rollback)")
    if not store.exists():
        print(
            f"imgsearch migrate: collection '{config.collection}' does not exist: `imgsearch index` makes it "
            f"with IMGSEARCH_MODEL",
            file=sys.stderr,
        )
        return EXIT_ERROR
    store.check_schema()  # an old schema is upgraded first, before a model is loaded
    labelled = _labelled_data(args)  # bad evaluation data fails now, not after the build
    encoder = load_embedder(config)
    if not args.json:
        print(
            f"embedding the images of '{config.collection}' with {encoder.name} into a new collection", file=sys.stderr
        )
    report = migration.build(config, encoder, store, show_progress=show_progress(args))
    if labelled:
        _compare_models(args, config, labelled, [report.old_model, encoder.name], encoder)
    if not args.build_only:
        migration.switch(store, report, allow_missing=args.allow_missing)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        _print_migration(config, report)
    return EXIT_OK


def _tune_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)


def cmd_tune(args: argparse.Namespace) -> int:
    from imgsearch.model.loading import load_embedder

    config = settings(args).model_copy(update={"precision": "auto"})
    encoder = load_embedder(config)
    if getattr(encoder, "needs_tuning", False):
        encoder.tune()
    choice = getattr(encoder, "precision_choice", None)
    print(
        choice.describe() if choice else f"{encoder.name} runs {encoder.backend} {encoder.precision}: nothing to tune"
    )
    text_choice = encoder.tune_text() if hasattr(encoder, "tune_text") else None
    if text_choice is not None:
        print(text_choice.describe())
    return EXIT_OK


COMMANDS = (
    Command(
        "tune",
        "build and time the exported runtimes (onnx, openvino) for the model now, instead of on a large job, and "
        "choose the text tower's setting for queries",
        _tune_arguments,
        cmd_tune,
    ),
    Command(
        "models",
        "list the models imgsearch knows by name, with their speed on this machine",
        _models_arguments,
        cmd_models,
        description="Known presets: family, vector size, input size, what each is good for, licence, and img/s "
        "and text-query ms as bench/model_speed.py measured them. Any other model name or directory "
        "works too; `imgsearch evaluate` compares them on your images.",
    ),
    Command(
        "evaluate",
        "score models on your own labelled images, side by side, to choose one",
        _evaluate_arguments,
        cmd_evaluate,
        description="Zero-shot accuracy (top-1, top-5, mean per-class recall) and leave-one-out kNN accuracy on "
        "a folder of class subfolders; text->image and image->text recall@1/5/10 on a CSV of "
        "image,caption rows. Image vectors are cached per model, so adding a model embeds only for "
        "it.",
    ),
    Command(
        "migrate",
        "switch the collection to another model while the API keeps answering",
        _migrate_arguments,
        cmd_migrate,
        description="Build a collection with the new model beside the current one, from the indexed folders "
        "(resumable: run it again after an interruption), then point the collection's name at it "
        "in one step. A running API follows within seconds. The old collection is kept for "
        "--rollback until `imgsearch drop --old`.",
    ),
)

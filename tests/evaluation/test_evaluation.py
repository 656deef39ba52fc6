"""`imgsearch evaluate`: the metrics on hand-made embeddings with answers worked out by hand, the labelled-data
readers, and the real command on two and then three local models with its cache, table, JSON and chart."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import numpy as np
import pytest
from PIL import Image

from imgsearch.evaluation import metrics
from imgsearch.evaluation.data import EvaluationDataError, read_captions, read_class_folder
from tests.support.models import build_local_clip
from tests.support.photos import write_photo
from tests.support.processes import cli_environment, run_cli


def at(*degrees: float) -> np.ndarray:
    """Unit vectors in the plane at these angles."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_zero_shot_accuracy_and_mean_per_class_recall():
    e = np.eye(4)[:3]  # three classes along three axes
    images = e[[0, 0, 1, 0]]
    labels = np.array([0, 0, 1, 2])  # the last image is class 2 but looks like class 0
    scores = metrics.zero_shot(images, labels, e)
    assert scores["top1"] == pytest.approx(3 / 4)
    assert scores["mean_per_class_recall"] == pytest.approx((1 + 1 + 0) / 3)  # class 2's one image is missed
    assert scores["top5"] == 1.0  # only three classes: the right one is always among the first five


def test_class_vectors_average_the_prompts_and_are_unit_length():
    prompts = np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])  # (classes, templates, dim)
    rows = metrics.class_vectors(prompts)
    np.testing.assert_allclose(rows, [[2**-0.5, 2**-0.5], [1.0, 0.0]])


def test_retrieval_recall_both_ways():
    images = at(0, 90, 180)
    captions = at(10, 165, 60)  # describing images 0, 1 and 2
    scores = metrics.retrieval(images, captions, np.array([0, 1, 2]))
    # Text->image: caption 0's image is nearest; caption 1's is second (image 2 at 15 degrees is nearer);
    # caption 2's is last (images 1 and 0 are nearer).
    assert scores["text_to_image_R@1"] == pytest.approx(1 / 3)
    assert scores["text_to_image_R@5"] == scores["text_to_image_R@10"] == 1.0
    # Image->text: image 0's nearest caption is its own; image 1's nearest is caption 2; image 2's is caption 1.
    assert scores["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert scores["image_to_text_R@5"] == 1.0


def test_image_to_text_counts_any_of_an_images_captions_and_leaves_out_uncaptioned_images():
    images = at(0, 90, 200)
    captions = at(80, 5)  # both describe image 0: one far from it, one near
    scores = metrics.retrieval(images, captions, np.array([0, 0]))
    assert scores["image_to_text_R@1"] == 1.0  # image 0's nearest caption is one of its own; 1 and 2 have none
    assert scores["text_to_image_R@1"] == pytest.approx(1 / 2)  # the caption at 80 degrees finds image 1 first


def test_knn_accuracy_leaves_each_image_out_and_breaks_ties_by_the_nearest():
    vectors = at(0, 10, 20, 90, 100, 15)
    labels = np.array([0, 0, 0, 1, 1, 1])  # the last "B" sits among the A's
    # k=1: A0 finds A10; A10 and A20 find the B at 15; B90 and B100 find each other; B15 finds an A.
    assert metrics.knn_accuracy(vectors, labels, 1) == pytest.approx(3 / 6)
    # k=3: every A has two A's among its three; B90 and B100 have B, A, B; B15 still has three A's.
    assert metrics.knn_accuracy(vectors, labels, 3) == pytest.approx(5 / 6)
    # k=2: B90's two are B100 and A20, a tie the nearer (B100) wins.
    assert metrics.knn_accuracy(vectors[[3, 4, 2]], np.array([1, 1, 0]), 2) == pytest.approx(2 / 3)


def test_a_class_folder_is_read_by_subfolder_and_captions_relative_to_the_csv(tmp_path):
    write_photo(tmp_path / "set" / "golden_retriever" / "a.jpg", seed=1)
    write_photo(tmp_path / "set" / "golden_retriever" / "deep" / "b.png", seed=2)
    write_photo(tmp_path / "set" / "tabby-cat" / "c.jpg", seed=3)
    (tmp_path / "set" / "empty").mkdir()
    write_photo(tmp_path / "set" / ".hidden" / "d.jpg", seed=4)
    (tmp_path / "set" / "tabby-cat" / "notes.txt").write_text("not an image")
    folder = read_class_folder(tmp_path / "set")
    assert folder.class_names == ["golden retriever", "tabby cat"]
    assert [os.path.basename(p) for p in folder.paths] == ["a.jpg", "b.png", "c.jpg"] and folder.labels == [0, 0, 1]

    (tmp_path / "caps.csv").write_text(
        'image,caption\nset/tabby-cat/c.jpg,"a cat, asleep"\n'
        "set/golden_retriever/a.jpg,a dog\nset/tabby-cat/c.jpg,a tabby\n"
    )
    captions = read_captions(tmp_path / "caps.csv")
    assert captions.captions == ["a cat, asleep", "a dog", "a tabby"] and captions.images == [0, 1, 0]
    assert captions.paths[0] == str((tmp_path / "set/tabby-cat/c.jpg").resolve())

    (tmp_path / "bad.csv").write_text("set/tabby-cat/c.jpg,a cat\nset/missing.jpg,nothing\n")
    with pytest.raises(EvaluationDataError, match=r"bad.csv, row 2: no image at .*missing.jpg"):
        read_captions(tmp_path / "bad.csv")
    with pytest.raises(EvaluationDataError, match="at least 2"):
        read_class_folder(tmp_path / "set" / "golden_retriever")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Two classes of three copies each of one picture (re-encoded, converted, resized), so any model puts each
    image's nearest neighbours in its own class; a CSV captions three of them; three random-weight models."""
    root = tmp_path_factory.mktemp("evaluate")
    for name, seed in (("red_apple", 1), ("blue_sky", 2)):
        original = write_photo(root / "set" / name / "1.png", seed=seed, size=(192, 128))
        picture = Image.open(original)
        picture.save(root / "set" / name / "2.jpg", quality=80)
        picture.resize((96, 64)).save(root / "set" / name / "3.webp")
    (root / "captions.csv").write_text(
        "image,caption\nset/red_apple/1.png,a red apple\nset/blue_sky/1.png,a blue sky\nset/blue_sky/2.jpg,clouds\n"
    )
    models = [build_local_clip(root / f"model{seed}", "tiny", seed=seed) for seed in (0, 1, 2)]
    return root, models


def evaluate(imgsearch_bin, env, root, *args):
    done = run_cli(
        imgsearch_bin,
        env,
        "evaluate",
        "--folder",
        str(root / "set"),
        "--captions",
        str(root / "captions.csv"),
        "--knn",
        "2",
        *args,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_evaluate_scores_two_models_and_a_third_embeds_only_its_own(labelled, imgsearch_bin, tmp_path):
    root, (first, second, third) = labelled
    env = cli_environment(tmp_path / "data", first)
    chart = tmp_path / "out" / "compare.png"
    done = evaluate(
        imgsearch_bin, env, root, "--model", str(first), "--model", str(second), "--json", "--chart", str(chart)
    )
    results = json.loads(done.stdout)
    assert [r["model"] for r in results] == [str(first), str(second)]
    for result in results:
        assert result["embedded"] == 6 and result["cached"] == 0 and not result["skipped"]
        assert set(result["metrics"]) == {
            "top1",
            "top5",
            "mean_per_class_recall",
            "knn@2",
            "text_to_image_R@1",
            "text_to_image_R@5",
            "text_to_image_R@10",
            "image_to_text_R@1",
            "image_to_text_R@5",
            "image_to_text_R@10",
        }
        assert result["metrics"]["knn@2"] == 1.0  # each image's copies are its nearest, whatever the weights
        assert result["metrics"]["top5"] == 1.0  # two classes
        assert all(0.0 <= value <= 1.0 for value in result["metrics"].values())
    assert results[0]["metrics"] != results[1]["metrics"]  # other weights, other zero-shot and retrieval scores
    with Image.open(chart) as picture:
        assert picture.format == "PNG" and picture.width >= 600
    assert "img/s" not in done.stderr  # no progress bar in a log; in a terminal there is one:
    command = shlex.join([imgsearch_bin, "evaluate", "--folder", str(root / "set"), "--model", str(first)])
    terminal = subprocess.run(
        ["script", "-qec", f"stty cols 120 rows 40; {command}", "/dev/null"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert re.search(r"model0: 100%\|.*\| 6/6", terminal.stdout), terminal.stdout

    again = json.loads(
        evaluate(
            imgsearch_bin, env, root, "--model", str(first), "--model", str(second), "--model", str(third), "--json"
        ).stdout
    )
    assert [(r["embedded"], r["cached"]) for r in again] == [(0, 6), (0, 6), (6, 0)]
    assert again[0]["metrics"] == results[0]["metrics"]  # the cached vectors give the same scores

    (root / "set" / "red_apple" / "3.webp").touch()  # a changed file is embedded again
    os.utime(root / "set" / "red_apple" / "3.webp", ns=(1, 1))
    changed = json.loads(evaluate(imgsearch_bin, env, root, "--model", str(first), "--json").stdout)
    assert (changed[0]["embedded"], changed[0]["cached"]) == (1, 5)
    # An image both in a class folder and in the captions is one image, embedded once.
    relative = run_cli(
        imgsearch_bin,
        {**env, "IMGSEARCH_CACHE_DIR": str(tmp_path / "fresh")},
        "evaluate",
        "--folder",
        os.path.relpath(root / "set"),
        "--captions",
        str(root / "captions.csv"),
        "--model",
        str(first),
        "--json",
    )
    assert json.loads(relative.stdout)[0]["embedded"] == 6, relative.stderr


@pytest.mark.slow
def test_evaluate_prints_a_table_skips_unreadable_images_and_refuses_bad_input(labelled, imgsearch_bin, tmp_path):
    root, (first, second, _) = labelled
    env = cli_environment(tmp_path / "data", first)
    broken = root / "set" / "blue_sky" / "4.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    fifo = root / "set" / "red_apple" / "pipe.jpg"  # reading it would wait for a writer forever
    os.mkfifo(fifo)
    try:
        done = evaluate(
            imgsearch_bin,
            env,
            root,
            "--model",
            str(first),
            "--model",
            str(second),
            "--template",
            "a photo of {}.",
            "--template",
            "a picture of a {}",
        )
    finally:
        broken.unlink()
        fifo.unlink()
    assert f"skipped {fifo}: {fifo}: a FIFO, not a regular file" in done.stderr
    header, rule, *rows = done.stdout.strip().splitlines()
    assert header.split() == [
        "model",
        "top1",
        "top5",
        "class_recall",
        "knn@2",
        "t2i_R@1",
        "t2i_R@5",
        "t2i_R@10",
        "i2t_R@1",
        "i2t_R@5",
        "i2t_R@10",
        "images",
    ]
    assert [row.split()[0] for row in rows] == ["model0", "model1"]
    assert "(2 unreadable)" in rows[0] and f"skipped {broken}" in done.stderr
    columns = list(zip(*(row.split()[1:5] for row in rows)))
    assert all(any(cell.endswith("*") for cell in column) for column in columns)  # the best of each marked

    refused = run_cli(imgsearch_bin, env, "evaluate", "--model", str(first))
    assert refused.returncode == 2 and "--folder DIR" in refused.stderr
    refused = run_cli(imgsearch_bin, env, "evaluate", "--folder", str(root / "set"), "--template", "a photo")
    assert refused.returncode == 2 and "exactly one {}" in refused.stderr
    refused = run_cli(imgsearch_bin, env, "evaluate", "--folder", str(root / "set" / "red_apple"))
    assert refused.returncode != 0 and "at least 2" in refused.stderr and "Traceback" not in refused.stderr


def test_the_evaluation_cache_is_this_users_alone_and_never_written_through_a_link(tmp_path):
    """Its vectors decide the scores a user chooses a model by: a folder another user could write to is closed
    (or refused), and the old predictable temporary name (vectors.PID.tmp.npz) linked elsewhere is not followed."""
    from types import SimpleNamespace

    from imgsearch.evaluation.runner import VectorCache

    model = SimpleNamespace(name="m", fingerprint=[0.5, 0.25], precision="fp32", backend="torch")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    cache_dir.chmod(0o777)
    cache = VectorCache(cache_dir, model)
    folder = cache.file.parent
    assert all(os.stat(level).st_mode & 0o077 == 0 for level in (cache_dir, cache_dir / "evaluation", folder))
    victim = tmp_path / "victim.txt"
    victim.write_text("kept")
    (folder / f"vectors.{os.getpid()}.tmp.npz").symlink_to(victim)
    cache.vectors["a.jpg|1|2"] = np.ones(4, dtype=np.float32)
    cache.save()
    assert victim.read_text() == "kept"
    assert list(VectorCache(cache_dir, model).vectors) == ["a.jpg|1|2"]  # and read back

    unusable = tmp_path / "a-file"
    unusable.write_text("")
    without = VectorCache(unusable / "cache", model)  # cannot be made: evaluated without a cache, not an error
    without.vectors["b.jpg|1|2"] = np.ones(4, dtype=np.float32)
    without.save()

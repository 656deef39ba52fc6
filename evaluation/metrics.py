"""Metrics for choosing a model on your own labelled images, defined as CLIP_benchmark defines them.

Every function takes unit-length embeddings (rows) and returns plain floats in 0..1. Pure numpy: no model here.
"""

from __future__ import annotations

import numpy as np

RECALL_AT = (1, 5, 10)


def class_vectors(template_vectors: np.ndarray) -> np.ndarray:
    """One zero-shot classifier row per class from its prompts' embeddings, shaped (classes, templates, dim):
    the prompts' mean, made unit length again (CLIP's prompt ensembling)."""
    mean = template_vectors.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def zero_shot(images: np.ndarray, labels: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """Zero-shot classification of ``images`` (n, dim) with true class indices ``labels`` (n,) against the
    classifier rows ``classes`` (c, dim): top-1 and top-5 accuracy, and the mean over classes of each class's
    top-1 recall (what CLIP_benchmark calls mean per-class recall; it weighs small classes as much as big ones)."""
    logits = images @ classes.T
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    top5 = (order[:, :5] == labels[:, None]).any(axis=1)
    recalls = [top1[labels == c].mean() for c in np.unique(labels)]
    return {"top1": float(top1.mean()), "top5": float(top5.mean()), "mean_per_class_recall": float(np.mean(recalls))}


def retrieval(images: np.ndarray, texts: np.ndarray, text_image: np.ndarray) -> dict[str, float]:
    """Text->image and image->text recall@1/5/10. ``text_image[t]`` is the index of the image caption ``t``
    describes (an image may have several captions).

    Text->image: the share of captions whose image is among the k nearest images. Image->text: the share of
    images with at least one of their captions among the k nearest captions."""
    scores = texts @ images.T  # (captions, images)
    rank_of_image = _rank_of(scores, text_image[:, None])[:, 0]
    out = {f"text_to_image_R@{k}": float((rank_of_image < k).mean()) for k in RECALL_AT}
    by_image = scores.T  # (images, captions)
    owner = text_image[None, :] == np.arange(len(images))[:, None]  # (images, captions): whose caption it is
    order = np.argsort(-by_image, axis=1, kind="stable")
    hits = np.take_along_axis(owner, order, axis=1)  # True where a ranked caption is the image's own
    described = owner.any(axis=1)  # images no caption describes are left out
    for k in RECALL_AT:
        out[f"image_to_text_R@{k}"] = float(hits[described, :k].any(axis=1).mean()) if described.any() else 0.0
    return out


def knn_accuracy(images: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out k-nearest-neighbour classification: each image gets the class most of its k nearest
    other images have (a tie goes to the class of the nearest among the tied); the share it gets right."""
    k = min(k, len(images) - 1)
    if k < 1:
        return 0.0
    scores = images @ images.T
    np.fill_diagonal(scores, -np.inf)  # never its own neighbour
    nearest = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    right = 0
    for row, true in zip(labels[nearest], labels):
        classes, counts = np.unique(row, return_counts=True)
        tied = set(classes[counts == counts.max()])
        guess = next(label for label in row if label in tied)  # row is nearest first
        right += guess == true
    return right / len(images)


def _rank_of(scores: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each row of ``scores``, how many columns score strictly higher than the ``wanted`` column (0 = first;
    a tie counts in the wanted column's favour)."""
    target = np.take_along_axis(scores, wanted, axis=1)
    return (scores > target).sum(axis=1, keepdims=True)

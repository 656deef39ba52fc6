"""Indexer: scan folders -> plan what changed -> decode and embed -> write to Milvus.

``scanner`` finds image files, ``plan`` compares them with what the collection
holds, ``embedder`` decodes and embeds in a pipeline, ``writer`` upserts and
deletes rows, and ``runner`` wires them together for ``imgsearch index``.
"""

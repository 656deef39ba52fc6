"""Watching folders: file-system events (or polling where events cannot be trusted), settled into batches that the
incremental indexer runs, and a periodic reconcile of every root because events get lost (docs/watching.md)."""

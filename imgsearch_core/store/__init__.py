"""The collection: its columns (``fields``) and the filters over them (``filters``)."""

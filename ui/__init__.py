"""Streamlit web UI. A client of the search API over HTTP; it never opens Milvus or loads a model."""

"""What the indexer and the search API share: settings, the encoder, image decoding and the Milvus gateway."""

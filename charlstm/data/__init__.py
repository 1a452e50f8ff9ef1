"""Data layer: text preparation, vocabulary, corpora and their sources, cache, batches, catalogue, synthetic corpora."""

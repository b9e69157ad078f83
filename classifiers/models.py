"""Few-shot classifiers trained by a key's owner over a model's embeddings."""

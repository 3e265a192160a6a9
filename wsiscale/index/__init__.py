"""FAISS actor pool: distributed k-means, per-slide prototypes, sharded ANN search, slide retrieval."""

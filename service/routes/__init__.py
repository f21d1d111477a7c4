"""HTTP routes, one module per group: embeddings, search and index writes, operations."""

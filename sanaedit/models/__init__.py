"""Model pieces: edit transformer, autoencoder wrappers, meta-query text encoder (connector, projector)."""

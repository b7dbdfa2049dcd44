"""ssae-lens: Sparse Shift Autoencoders and steering for SAELens / TransformerLens."""

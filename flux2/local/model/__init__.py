"""FLUX.2 network code: transformer, autoencoder, text encoder, tokenizer, sampling, params.

Pure: it reads no model files and imports nothing of weights/ (file formats) or the runtime above it.
"""

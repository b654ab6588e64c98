"""What one search request may ask for, and where `xlr serve` listens: light constants for the CLI's parser."""

DEFAULT_PORT = 8000
MAX_QUERY_CHARS = 500
MAX_RESULTS = 100
MAX_UPLOAD_BYTES = 16 * 2**20
# Decoded pixels of one query image: a 20 KB PNG can claim 13000×13000 (a decompression bomb); refused from its header.
MAX_QUERY_PIXELS = 40_000_000

"""ssl_bench: a self-supervised representation benchmark built around cross-channel encoding."""

__version__ = "0.1.0"

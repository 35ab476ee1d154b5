"""labkit: watch fast decoding happen. See README.md.

Heavy modules load on first use: `from labkit import Session` imports torch and transformers then.
"""
__version__ = "0.1.0"

__all__ = ["Session", "Run", "load"]


def __getattr__(name):
    if name in ("Session", "Run"):
        from . import session
        return getattr(session, name)
    if name == "load":
        from .models import load
        return load
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")

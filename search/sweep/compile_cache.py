"""JAX's persistent compilation cache, shared by every trial on a node.

Keras keeps the learning rate in an optimizer variable, so trials that differ only in learning rate (or dropout
rate, also a runtime value) trace the same XLA programs: the first trial compiles, the others load the compiled
program from ``SWEEP_CACHE_DIR/jax-compile``. TensorFlow and PyTorch have no such cache; there it is a no-op.
"""

from __future__ import annotations

from pathlib import Path

_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}
_counts = {"hits": 0, "misses": 0}  # this process's, since the listener was registered
_listening = False


def enable_for(backend: str, wanted: bool, cache_dir: str | Path | None) -> dict[str, int] | None:
    """Turn the cache on when the backend is JAX and the study wants it (``cache_dir`` None: this node's
    SWEEP_CACHE_DIR); return the counts so far, to subtract later, or None when it stays off."""
    if backend != "jax" or not wanted:
        return None
    from data_pipeline.cache import default_cache_dir

    _enable(cache_dir or default_cache_dir())
    return counts()


def _enable(cache_dir: str | Path) -> None:
    """Idempotent: Ray reuses a trial's actor for the next trial."""
    global _listening
    import jax
    from jax import monitoring

    from data_pipeline.cache import cache_folder

    folder = cache_folder("jax-compile", cache_dir)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # small programs too: trials repeat them
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    if not _listening:
        monitoring.register_event_listener(_count)
        _listening = True


def _count(event: str, **_) -> None:
    if event in _EVENTS:
        _counts[_EVENTS[event]] += 1


def counts() -> dict[str, int]:
    """Compiled programs loaded from the cache (hits) and compiled afresh (misses) by this process so far."""
    return dict(_counts)

"""Progress reporting of long computations: progress=True (a tqdm bar) or a callable(done, total)."""
from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """Adapts a checked ``progress`` argument (False, True or a callable) to the engines' callback
    ``reporter(done, total)``; ``enabled`` says whether to call it at all."""

    def __init__(self, progress, desc, unit="tile"):
        self.bar = None
        self.unit = unit
        self.callback = progress if callable(progress) and not isinstance(progress, bool) else None
        self.desc = desc
        self.enabled = bool(progress)

    def __call__(self, done, total):
        if self.callback is not None:
            self.callback(done, total)
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()

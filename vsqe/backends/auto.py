"""`--backend auto`: a backend that picks the concrete one per call size (choice.py's rule).

The frame size is known only when the first frame arrives, so the concrete backend is built
lazily, at the first call of a size that chooses it, and kept: every later call of that size (and
any size choosing the same name) runs it. `.name` is the concrete name chosen last ("auto"
before the first call), which is what `vsqe run` prints. A backend that fails to build or to run
its first call (OpenVINO conversion of a model it cannot read, TensorRT without a working engine
build, ...) is dropped with one warning and the rule is asked again without it; torch-fp32 is the
last resort and its errors propagate.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import torch

from vsqe.backends.choice import Capabilities, Choice, choose, tile_for

log = logging.getLogger("vsqe.backends")

Factory = Callable[[str], object]  # concrete name -> backend (a Backend)


class AutoBackend:
    def __init__(self, caps: Capabilities, factory: Factory) -> None:
        self.caps = caps
        self._factory = factory
        self._built: dict[str, object] = {}
        self._logged: set[tuple[str, str]] = set()
        self.name = "auto"
        self.chosen: list[str] = []  # concrete names in the order first used

    def choice(self, pixels: int) -> Choice:
        return choose(self.caps, pixels)

    def tile_for(self, height: int, width: int) -> int | None:
        """The Enhancer's tile for a frame: the one the backend chosen for the whole frame needs."""
        return tile_for(self.choice(height * width).name, height, width, self.caps.model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        while True:
            choice = self.choice(h * w)
            backend = self._built.get(choice.name)
            first = backend is None
            try:
                if backend is None:
                    backend = self._factory(choice.name)
                out = backend(x)
            except Exception as exc:  # noqa: BLE001 - any failure of a fast path falls back
                if not first or choice.name == "torch-fp32":
                    raise
                self._exclude(choice.name, exc)
                continue
            if first:
                self._built[choice.name] = backend
                self.chosen.append(choice.name)
            self._log_once(choice, w, h)
            self.name = choice.name
            return out

    def _exclude(self, name: str, exc: BaseException) -> None:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        log.warning("backend auto: %s failed here (%s); choosing again without it", name, reason)
        self.caps = dataclasses.replace(self.caps, excluded=self.caps.excluded | {name})

    def _log_once(self, choice: Choice, width: int, height: int) -> None:
        key = (choice.name, f"{width}x{height}")
        if key not in self._logged:
            self._logged.add(key)
            log.info("backend auto -> %s for %dx%d calls: %s", choice.name, width, height, choice.reason)

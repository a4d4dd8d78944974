"""A name → factory registry (timm's ``register_model`` / ``create_model`` pattern), shared by
the backbone and text-encoder registries so that an ablation is a config change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering a factory under ``name`` (a name registers once)."""

        def deco(fn: F) -> F:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = fn
            return fn

        return deco

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> F:
        """The factory of ``name``; an unknown name is a clear error listing the known ones."""
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._factories[name]

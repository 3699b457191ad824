"""`Actor[T]`: how code annotates a Ray actor handle to a `T`, so mypy tells one actor's handle from another's.

Ray's own `ActorHandle[T]` types every method attribute as `Never`, so mypy takes each line after a `.remote()`
call as unreachable and silently stops checking the rest of the function. At run time `Actor` is `ActorHandle`;
to mypy it is an `ActorHandle[T]` whose method attributes are `Any`: the arguments of a remote call are not
checked, but the code after it is, and a handle of the wrong actor class, a list or an `object` is refused.
Ray's `ActorClass[T].remote()` returns `ActorHandle[T] | type[T]` (the second half lets its `@ray.method` typing
work), which `as_actor` narrows to the handle it is at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, cast

from ray.actor import ActorHandle

T = TypeVar("T")

if TYPE_CHECKING:
    from ray.actor import ActorProxy

    class Actor(ActorHandle[T]):
        def __getattr__(self, name: str) -> Any: ...

else:
    Actor = ActorHandle


def as_actor(handle: ActorProxy[T]) -> Actor[T]:
    """The handle `ActorClass[T].remote()` returned, typed as the `Actor[T]` it is."""
    return cast("Actor[T]", handle)

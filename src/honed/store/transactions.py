"""Declared transactions: a query function of the store's modules becomes a
:class:`~honed.store.store.Store` method that runs it in one transaction.

``get_job = reads(jobs.get_job)`` in the Store's body is the whole of such a method: it
takes the query's own arguments (all but the connection), keeps its docstring, and runs
it in a read transaction (``writes``: a write transaction, ``BEGIN IMMEDIATE`` on
SQLite). Only methods that do more than one query's worth are written out by hand.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import sqlalchemy as sa

if TYPE_CHECKING:
    from honed.store.store import Store

P = ParamSpec("P")
R = TypeVar("R")


class Query(Generic[P, R]):
    """A query function bound, on a Store, to a transaction of its own."""

    def __init__(self, query: Callable[Concatenate[sa.Connection, P], R], *, write: bool) -> None:
        self.query = query
        self.write = write
        functools.update_wrapper(self, query)
        signature = inspect.signature(query)  # what callers pass: all but the connection
        self.signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    @overload
    def __get__(self, store: None, owner: type | None = None) -> Query[P, R]: ...

    @overload
    def __get__(self, store: Store, owner: type | None = None) -> Callable[P, R]: ...

    def __get__(self, store: Store | None, owner: type | None = None) -> Any:
        if store is None:
            return self
        query, write = self.query, self.write

        @functools.wraps(query)
        def method(*args: P.args, **kwargs: P.kwargs) -> R:
            with store._transaction(write=write) as conn:
                return query(conn, *args, **kwargs)

        method.__signature__ = self.signature  # type: ignore[attr-defined]
        return method


def reads(query: Callable[Concatenate[sa.Connection, P], R]) -> Query[P, R]:
    """The query as a Store method in a read transaction."""
    return Query(query, write=False)


def writes(query: Callable[Concatenate[sa.Connection, P], R]) -> Query[P, R]:
    """The query as a Store method in a write transaction."""
    return Query(query, write=True)

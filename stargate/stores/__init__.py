"""Block stores behind vDisks: the protocol, a sparse-file store and an in-memory store."""

from stargate.stores.base import BlockStore, Extent
from stargate.stores.file import FileStore
from stargate.stores.memory import MemoryStore

__all__ = ["BlockStore", "Extent", "FileStore", "MemoryStore"]

"""The ZooKeeper coordinator: kazoo's client, driven from trio (bridge.py) without a thread
per call; versioned ownership znodes, ephemeral liveness znodes, an election recipe, the
cluster's description as znodes (coordinator.py)."""

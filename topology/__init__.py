"""The cluster model: cluster.json (nodes, addresses, ports), VMs and their vDisks, vDisk
metadata, target naming, and the ownership records with the compare-and-swap acquisition
that says which CVM serves a vDisk. Files only, no sockets.

May import: iscsicore.
"""

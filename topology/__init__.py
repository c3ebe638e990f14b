"""The cluster model: cluster.json (nodes, addresses, ports), VMs and their vDisks, vDisk
metadata, target naming, and the ownership records with the compare-and-swap acquisition
that says which CVM serves a vDisk; the coordinators that hold those records, liveness and
elections (the cluster directory, or ZooKeeper through kazoo: the one network client here).

May import: iscsicore.
"""

"""The cluster mode: N simulated nodes (a CVM running stargate and a redirector each) on one
machine, sharing the vDisk stores under one directory. See DESIGN.md, "The cluster"."""

"""The target alone: a CVM's storage service. SCSI emulation (scsi/) over block stores
(stores/), the one command queue, sessions, the login phase and discovery, the trio server
and its connections. Cluster behaviour (ownership, fencing) and fault injection reach it
only through the hooks it is given at construction.

May import: iscsicore, topology, faults, control.
"""

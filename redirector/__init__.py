"""A node's iSCSI redirector: the placement policy (pure), health checks of the stargates
(with the initiator's login), the listener answering logins with 0x0101 redirects, failback,
its log and its HTTP page.

May import: iscsicore, topology, faults, control, initiator; never stargate.
"""

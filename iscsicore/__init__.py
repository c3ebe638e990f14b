"""The sans-IO iSCSI protocol core shared by the target, the initiator and the redirector:
PDU declarations and codecs, framing, digests, serial arithmetic, text keys, negotiation,
CHAP, the login phase, the full feature phase's rules (``fullfeature``: sequence numbers,
data segmentation and sequence checks, NOP/Logout/Text exchanges; the target's CmdSN
window is ``cmdsn``), portals, SCSI opcodes/CDBs/sense. No sockets, no trio.

May import: nothing of the project (the bottom floor; pyproject.toml's import contracts).
"""

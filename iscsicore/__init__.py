"""The sans-IO iSCSI protocol core shared by the target, the initiator and the redirector:
PDU declarations and codecs, framing, digests, serial arithmetic, text keys, negotiation,
CHAP, the login and Text exchanges, portals, SCSI opcodes/CDBs/sense. No sockets, no trio.

May import: nothing of the project (the bottom floor; pyproject.toml's import contracts).
"""

"""The full feature phase of iSCSI (RFC 7143), sans-IO: one set of rules that the target
(stargate), the initiator and the redirector's discovery sessions all drive, the way
``iscsicore.login`` is the one login phase for both sides.

- ``numbering``: the initiator's CmdSN/ExpStatSN bookkeeping and the target's StatSN
  (the target's CmdSN window is ``iscsicore.cmdsn.CmdSNWindow``);
- ``segments``: splitting a buffer into Data-In or Data-Out PDUs;
- ``sequence``: checking a received Data-Out or Data-In sequence;
- ``exchanges``: the NOP and Logout exchanges;
- ``text``: Text exchanges with their continuations (SendTargets).

No I/O, no trio: it may import only ``iscsicore``.
"""

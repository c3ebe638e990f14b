"""A connection's timers and the tuning constants of its I/O."""

from __future__ import annotations

from dataclasses import dataclass

RECEIVE_SIZE = 256 * 1024
# Responses queued before they must go out: bounds memory when an initiator sends many
# large reads at once (and stops reading).
OUTPUT_HIGH_WATER = 4 * 1024 * 1024
# PDUs one connection handles before it sends and lets the other connections run: a vDisk
# with 128 commands in flight must not make a neighbour's single command wait for all of
# them (the one queue is fair only if every connection gets to put its commands in).
# fio, QD 1 p99 beside a QD 128 vDisk: 8 -> ~265 µs, 4 -> ~200 µs, 2 -> ~150 µs; 8 vDisks at
# QD 8 in all: 4 costs ~10-15% of the aggregate against 8 (a send per turn).
TURN_BUDGET = 4
# ... and when it is the only session (no neighbour to wait for it): fewer sends and
# scheduler passes per command.
SOLE_TURN_BUDGET = 64
# Largest write a single command may ask for: bounds the buffer one command can pin.
MAX_TRANSFER_BYTES = 16 * 1024 * 1024  # twice the Block Limits maximum the LU reports
DEFAULT_DATA_OUT_TIMEOUT = 30.0
DEFAULT_PDU_TIMEOUT = 10.0
DEFAULT_CONTROL_PDU_RATE = 2000.0  # per second, per connection (ConnectionTimers)
DEFAULT_CONTROL_PDU_BURST = 256
# A connection out of control-PDU tokens is read again once this share of a second's
# tokens has refilled (at least one): a few wake-ups a second, not one per PDU.
CONTROL_RESUME_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class ConnectionTimers:
    nop_interval: float = 5.0  # seconds of silence from the initiator before a NOP-In ping
    nop_timeout: float = 10.0  # no byte for this long after a ping: the connection is dead
    # A command holding a queue slot gets this long for the Data-Out it waits for (from the
    # slot or its latest R2T); past it the connection is dropped (ErrorRecoveryLevel 0),
    # which ends its tasks and gives back their slots and buffers.
    data_out_timeout: float = DEFAULT_DATA_OUT_TIMEOUT
    # A PDU whose first bytes came must be complete this long after (a PDU trickled in byte
    # by byte would otherwise hold the connection and its buffer forever): else dropped.
    pdu_timeout: float = DEFAULT_PDU_TIMEOUT
    # PDUs that carry no SCSI work (NOP-Outs, Text Requests, SNACKs) a connection may send:
    # a token bucket of this rate per second and this burst. Past it the connection is not
    # read until tokens refill: its bytes wait in the socket (TCP pushes back on a flooder),
    # none is dropped or reordered, and the other connections are not slowed. 0: unlimited.
    control_pdu_rate: float = DEFAULT_CONTROL_PDU_RATE
    control_pdu_burst: int = DEFAULT_CONTROL_PDU_BURST

    @property
    def watchdog_tick(self) -> float:
        """How often the deadlines are looked at: a quarter of the shorter, within bounds."""
        return max(0.05, min(1.0, self.data_out_timeout / 4, self.pdu_timeout / 4))

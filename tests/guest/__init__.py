"""QEMU guest harness: the real Linux kernel initiator (open-iscsi) against targets on loopback.

``build.py`` makes the kernel and initramfs (cached outside the repository), ``harness.py``
boots them with one scenario script from ``scenarios/`` and reports its STEP lines.
"""

"""The open-iscsi guest suites: Linux's initiator in a QEMU guest (see cluster/guest/)."""

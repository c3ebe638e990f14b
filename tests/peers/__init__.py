"""Real peers driven by the tests: tgtd (the reference target), libiscsi tools, QEMU, fio."""

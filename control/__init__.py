"""The control plane's HTTP side: a small h11 server and client over trio, the control
token that mutating requests carry, the cluster page client, the /faults API and the
fault summaries the pages show.

May import: iscsicore, topology, faults.
"""

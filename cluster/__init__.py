"""The cluster on top of everything: N simulated nodes on one machine (a CVM running
stargate with ownership admission, and a redirector, per node), the process supervisor,
the `stargate` console script, the demo, fault scenarios and timelines, the soak.
See docs/DESIGN.md, "The cluster".

May import: every other package (the top floor).
"""

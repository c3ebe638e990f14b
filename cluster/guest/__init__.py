"""QEMU guest harness: the real Linux kernel initiator (open-iscsi) against targets on loopback.

It lives in the cluster layer (it imports nothing of the project) so that the conformance
kit's open-iscsi driver can boot it; the tests in tests/guest/ use it too.

Pieces
------
``build.py``      the guest image: Debian's newest ``linux-image-6.1.0-N-amd64`` (kernel booted
                  uncompressed through PVH, 26 modules) and an uncompressed cpio initramfs with
                  busybox, iscsid/iscsiadm, fio and e2fsprogs. Fetched with ``apt-get download``
                  and ``dpkg -x``, never installed; cached in ``~/.cache/stargate-emu/guest/<key>``
                  (``$STARGATE_GUEST_CACHE``), key = package versions + init script, built under
                  a file lock. Cold: 15 to 30 s; cached: about 1 s of apt-cache queries, once
                  per process. ``python -m cluster.guest.build`` builds it by hand.
``harness.py``    ``GuestImage.ensure()``, ``Guest`` (one QEMU running one scenario),
                  ``run_scenario``, ``GuestResult``.
``relay.py``      the per-connection guestfwd relay to the host portal (re-pointable, holds a
                  connection while the portal refuses).
``scenarios/``    guest shell scripts; ``_guestlib.sh`` is the guest's main program and the
                  function library every scenario can call (not a scenario itself).

Writing a test
--------------
::

    from cluster.guest.harness import Guest, GuestImage

    image = GuestImage.ensure()
    portals = {                      # guest side -> host side
        "10.0.2.100:3261": ("127.77.1.1", 3261),   # node 1 redirector
        "10.0.2.101:3261": ("127.77.1.2", 3261),   # node 1 stargate
        "10.0.2.110": 40123,                       # port 3260 on the guest, 127.0.0.1:40123
    }
    with Guest(image, portals, "my_scenario", env={"TARGET_IQN": iqn}, timeout=240,
               name=request.node.name) as guest:
        guest.wait_for("kill-stargate")            # scenario ran: wait_host kill-stargate
        ...                                        # act on the host
        guest.repoint("10.0.2.101:3261", new_port) # optional: move a portal's host side
        guest.signal("kill-stargate", "payload")   # its wait_host returns, $HOST_REPLY=payload
        result = guest.wait_done()
    result.assert_passed("login", "fio")          # all STEPs passed, these were reported, rc 0
    result.values["current_portal"]               # VALUE lines

Or without a ``with``: ``run_scenario(image, portals, "name", on_wait={"event": callback})``.

Rules of the guest network
--------------------------
* The guest is 10.0.2.15; it reaches only the guest-side portals you list (10.0.2.100-199).
  Anything a target tells the guest (a redirect's TargetAddress, SendTargets answers) must
  use the guest-side address: a target that advertises 127.x.y.z sends the guest nowhere.
* SendTargets through a guestfwd returns the target's own (host) portal: scenarios create the
  node record for the guest-side portal by hand (``iscsi_connect`` does).
* While a host portal refuses, the relay holds each guest connection open and silent for up
  to ``connect_patience`` s (60) and relays it once the portal answers; ``connect_patience=0``
  closes it at once (see relay.py for the open-iscsi trap that this avoids).

Scenario scripts (busybox ash; env from ``env=`` plus ``PORTALS``)
------------------------------------------------------------------
Protocol: ``step NAME CMD...``, ``step_pass NAME DETAIL``, ``step_fail NAME DETAIL``,
``check NAME DETAIL TEST...``, ``value KEY VALUE``, ``wait_host EVENT`` (-> ``$HOST_REPLY``).
iSCSI: ``iscsi_discover PORTAL``, ``iscsi_connect IQN PORTAL`` (prints /dev/sdX),
``iscsi_add_node``, ``iscsi_set IQN PORTAL NAME VALUE``, ``iscsi_login``, ``iscsi_logout``,
``iscsi_disk IQN``, ``iscsi_session_info IQN``, ``iscsi_session_field IQN "Current Portal"``,
``iscsi_wait_state IQN LOGGED_IN [S]``, ``iscsi_wait_no_session IQN [S]``,
``iscsi_wait_portal IQN 10.0.2.101:3261 [S]`` (failover/failback landed), ``report_session``.
fio: ``fio_start DISK SIZE [OPTIONS]`` (background, crc32c verify), ``fio_finish STEP``.
Output of commands goes to the console log; only protocol lines go to the host.

Logs: ``/tmp/stargate-emu-guest/<test>-N-xxxx/`` (``$STARGATE_GUEST_LOG_DIR``): console.log
(kernel, iscsid, commands), control.log (protocol, with host times; ``>`` host to guest,
``=`` re-points), route-*.log (one line per relayed connection), qemu-command.txt.
"""

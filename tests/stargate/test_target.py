"""The vDisk registry (`stargate.target`): target names, ACLs, the portal group's addresses,
and the registry's lookups that login, discovery and the cluster rely on."""

from __future__ import annotations

import pytest

from stargate.target import PortalGroup, TargetRegistry
from tests.stargate.client import memory_target
from topology.naming import TARGET_NAME_PREFIX, target_name_for

ALICE = "iqn.2026-11.test:alice"
BOB = "iqn.2026-11.test:bob"


def test_every_vdisk_is_a_target_named_after_its_id() -> None:
    assert TARGET_NAME_PREFIX == "iqn.2010-06.com.nutanix:vmdisk-"
    assert target_name_for("42") == "iqn.2010-06.com.nutanix:vmdisk-42"
    target = memory_target("42", 1 << 20)
    assert target.name == target_name_for("42")
    assert target.stats.vdisk_id == "42"
    assert memory_target("43", 1 << 20).stats is not target.stats  # counters per vDisk


def test_acl_none_admits_everyone_a_set_only_its_members() -> None:
    assert memory_target("open", 1 << 20).admits(ALICE)
    locked = memory_target("locked", 1 << 20, allowed=frozenset({ALICE}))
    assert locked.admits(ALICE) and not locked.admits(BOB)
    assert not memory_target("nobody", 1 << 20, allowed=frozenset()).admits(ALICE)


def test_portal_group_formats_each_advertised_address_with_its_tag() -> None:
    assert PortalGroup().target_address_values() == []
    group = PortalGroup(12, ["127.0.0.2:3261", "[::1]:3260"])
    assert group.target_address_values() == ["127.0.0.2:3261,12", "[::1]:3260,12"]
    assert PortalGroup().tag == 1


def test_registry_lookups_and_duplicates() -> None:
    registry = TargetRegistry()
    assert registry.portal_group.tag == 1 and len(registry) == 0
    first, second = memory_target("vd1", 1 << 20), memory_target("vd2", 1 << 20)
    registry.add(first)
    registry.add(second)
    with pytest.raises(ValueError, match="vd1"):
        registry.add(memory_target("vd1", 1 << 20))
    assert registry.get(target_name_for("vd1")) is first
    assert registry.by_vdisk_id("vd2") is second
    assert registry.get("vd2") is None  # by target name, not vDisk id
    assert registry.remove(target_name_for("vd1")) is first
    assert registry.remove(target_name_for("vd1")) is None
    assert registry.get(target_name_for("vd1")) is None and len(registry) == 1
    registry.add(memory_target("vd1", 1 << 20))  # served again after removal


def test_visible_to_applies_each_targets_acl_in_order() -> None:
    registry = TargetRegistry(PortalGroup(3, ["127.0.0.5:3261"]))
    targets = [
        memory_target("a", 1 << 20),
        memory_target("b", 1 << 20, allowed=frozenset({ALICE})),
        memory_target("c", 1 << 20, allowed=frozenset({BOB})),
    ]
    for target in targets:
        registry.add(target)
    assert registry.visible_to(ALICE) == targets[:2]
    assert registry.visible_to(BOB) == [targets[0], targets[2]]
    assert registry.visible_to("iqn.2026-11.test:carol") == [targets[0]]
    for target in registry:  # a snapshot: removing while iterating is allowed
        registry.remove(target.name)
    assert len(registry) == 0

"""Names in the cluster: every vDisk is its own iSCSI target,
``iqn.2010-06.com.nutanix:vmdisk-<vdisk id>``, in portal group 1 on every stargate."""

TARGET_NAME_PREFIX = "iqn.2010-06.com.nutanix:vmdisk-"
DEFAULT_PORTAL_GROUP_TAG = 1


def target_name_for(vdisk_id: str) -> str:
    return f"{TARGET_NAME_PREFIX}{vdisk_id}"

"""Built-in defaults shared by several layers.

``DEFAULT_DENIED_COMMANDS`` is the Go tool Fence's default command deny list
(docs/compatibility.md#default-command-deny-list; unchanged across its releases).  It applies unless
``command.useDefaults`` is ``false``: to every preflight check
(``fence.executor.preflight``), to remote commands when ``ssh.inheritDeny`` is
set (``fence.executor.sshpolicy``), and -- single-token entries -- to the
runtime exec layers that come later.

Entries are command prefixes in the same syntax as ``command.deny``: tokens
match on word boundaries and a token ending in ``=`` (``dd if=``) is an
option that may appear anywhere later in the command.
"""

DEFAULT_DENIED_COMMANDS: tuple[str, ...] = (
    # power state
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "init 0",
    "init 6",
    "systemctl poweroff",
    "systemctl reboot",
    "systemctl halt",
    # kernel modules and kernels
    "insmod",
    "rmmod",
    "modprobe",
    "kexec",
    # filesystems and disks
    "mkfs",
    "mkfs.ext2",
    "mkfs.ext3",
    "mkfs.ext4",
    "mkfs.xfs",
    "mkfs.btrfs",
    "mkfs.vfat",
    "mkfs.ntfs",
    "fdisk",
    "parted",
    "dd if=",
    # containers and namespaces
    "docker run -v /:/",
    "docker run --privileged",
    "chroot",
    "unshare",
    "nsenter",
)
"""The default deny list, in Fence's order (messages name the first entry that matches)."""

DEFAULT_DENY_SOURCE = "built-in default deny list"
"""How messages name where a default rule came from."""

"""Boot PV disks under Xen in QEMU, through a PV-GRUB-compatible loader (``invoke xen.check``).

- :mod:`recipe` loads ``ami/xen.toml`` (pinned Debian packages and settings of the test host);
- :mod:`host` makes the test host from those packages in the user's cache;
- :mod:`menulst`, :mod:`pvkernel` and :mod:`pvdisk` check a PV disk the way PV-GRUB reads it;
- :mod:`machine` runs Xen, dom0 and the guests in QEMU and reads their consoles;
- :mod:`check` puts them together: boot a build's ``pv`` disk and GET the app's health and version.
"""

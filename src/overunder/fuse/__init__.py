"""overunder's userspace filesystem: a FUSE transport written in pure Python, and the overlay
filesystem built on it.

The transport speaks the FUSE kernel protocol over ``/dev/fuse`` itself (``struct`` + ``os``,
no libfuse, no compile step), because the overlay needs the inode-level API (hard-link
identity, stable inode numbers, kernel cache invalidation), rename flags passed through
unchanged, and control over READDIRPLUS and the kernel's caches:

- :mod:`overunder.fuse.protocol` — the wire format (opcodes, ``struct`` layouts, INIT flags);
- :mod:`overunder.fuse.session` — ``Operations`` (what a filesystem implements) and
  ``Session`` (mount, the single-threaded request loop, notifications);
- :mod:`overunder.fuse.mounting` — getting a ``/dev/fuse`` descriptor onto a mountpoint, as
  root with ``mount(2)`` or unprivileged through ``fusermount3``, and unmounting.
"""

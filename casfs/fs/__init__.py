"""The pyfuse3 side: the mount's namespace, inodes, block cache and FUSE operations."""

"""Blocks of blobs in memory: the mount's read path between FUSE and the CAS client.

- ``cache``: ``BlockCache``, the LRU of blocks by bytes with single-flight fetches, and the
  policy of a read by an open file (sequential: whole blocks and readahead; random: just
  the bytes asked for).
- ``lru``: the LRU itself and its counters.
- ``flight``: one fetch of one block, awaited by every reader of it.
- ``readahead``: a file's read pattern (the window) and the streaming runs that fetch the
  blocks ahead of a sequential reader.
- ``verify``: hashing a blob read from its start, as its blocks land, and holding its last
  block back until the hash is known.
- ``disk``: the disk tier under the cache (blocks looked for on disk before the remote,
  written behind the read), over ``diskstore``, the block files themselves.

Blobs are immutable, so a cached block never goes stale: the only policy is LRU eviction
by bytes. Blocks are ``block_size`` bytes at ``index * block_size`` (the last one of a blob
is shorter). Everything here runs in the mount's one trio thread (hashing aside, in a
worker thread behind ``hashbehind``): the dictionaries need no locks, and each module's
notes say what a checkpoint may change.
"""

"""casfs: mount a remote content-addressable store (REAPI CAS over ByteStream) as a directory."""

__version__ = "0.1.0"

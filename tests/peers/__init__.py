"""Helpers that run third-party REAPI peers (buildbox-casd, buildbox-fuse) for interop tests."""

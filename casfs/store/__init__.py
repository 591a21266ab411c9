"""The embedded CAS: an on-disk content-addressed store. No gRPC in here."""

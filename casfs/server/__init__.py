"""gRPC servicers for the embedded CAS: ByteStream, CAS, Capabilities and ActionCache."""

"""The client side: an async (trio) CAS client over blocking grpcio."""

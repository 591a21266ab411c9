"""tvix castore (package tvix.castore.v1), generated from protos/casfs/_proto/tvix/."""

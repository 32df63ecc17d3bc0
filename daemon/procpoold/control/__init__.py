"""The control plane: the ROUTER socket (:mod:`.server`) and one handler per operation (:mod:`.handlers`)."""

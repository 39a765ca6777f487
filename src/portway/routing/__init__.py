"""Routing: model name -> alias -> ordered targets, and the attempt loop over them (one deadline, key pools,
retries, breakers). No web framework here."""

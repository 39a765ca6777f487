"""Identity: who is calling (master key, virtual keys, users and their JWTs, rotating key policies)."""

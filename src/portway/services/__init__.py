"""Services: the use cases the HTTP layer calls (chat, identity, usage recording, health)."""

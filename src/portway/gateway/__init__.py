"""The gateway's domain: routing, attempts, key pools, breakers, limits. No web framework imports here."""

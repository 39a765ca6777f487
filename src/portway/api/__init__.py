"""HTTP surfaces. Thin: parse, authenticate, call a service, render bytes."""

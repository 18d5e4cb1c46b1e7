"""Plugin models; importing this package registers them (see recbole_bifair.registry)."""

"""The hybrid level: several KV-cache groups sharing one block pool."""

"""The lab as data: a scenario, its topology, and the services that run on it (all pure)."""

"""ServerApp: run setup, the round loop through a strategy, central evaluation, outputs."""

"""Run settings: one validated :class:`RunConfig`, built from Flower's run config."""

from config.run_config import ConfigError, RunConfig, from_run_config

__all__ = ["ConfigError", "RunConfig", "from_run_config"]

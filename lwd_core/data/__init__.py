"""Data layer: episode schema, store layout, buffers, snapshots and validation."""

from lwd_core.data.episode import EPISODE_SCHEMA, Episode, EpisodeFormatError

__all__ = ["EPISODE_SCHEMA", "Episode", "EpisodeFormatError"]

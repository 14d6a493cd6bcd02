"""Test helpers that ship with ftbridge, for its tests and for its users' tests."""

from bridge.testing.wandb_server import AlertRecord, ArtifactRecord, RunRecord, WandbServer

__all__ = ["AlertRecord", "ArtifactRecord", "RunRecord", "WandbServer"]

"""Authentication of fleet data and of releases (HMAC-SHA256, keys derived from configured secrets).

- Each robot signs every episode it uploads: ``HMAC(robot_key, "episode:" + episode_id)``. The id is
  the content hash and ingestion verifies it against the content, so the signature covers every byte
  of the episode. Unsigned or wrongly signed episodes are quarantined.
- The rollout flow signs each release it publishes: ``HMAC(release_key, version|checkpoint|sha256)``.
  Actors verify the signature before trusting the sha256 and load only weights hashing to it.

Robot keys come from ``fleet.robot_keys`` (per robot) or are derived from ``fleet.signing_secret`` and
the robot id, so a leaked robot key does not let its holder sign as another robot.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import SecretStr

from lwd_core.config import reveal

SIGNATURE_KEY = "lwd.signature"
SIGNER_KEY = "lwd.signer"


def derive_key(secret: SecretStr | str, purpose: str) -> bytes:
    return hmac.new(reveal(secret).encode(), f"lwd/{purpose}".encode(), hashlib.sha256).digest()


def robot_key(fleet: Any, robot_id: str) -> bytes:
    explicit = getattr(fleet, "robot_keys", {}) or {}
    if robot_id in explicit:
        return reveal(explicit[robot_id]).encode()
    return derive_key(fleet.signing_secret, f"robot/{robot_id}")


def release_key(fleet: Any) -> bytes:
    return derive_key(fleet.signing_secret, "releases")


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign_episode_id(key: bytes, episode_id: str) -> str:
    return _mac(key, f"episode:{episode_id}")


def episode_signer(fleet: Any) -> Callable[[Any], dict[str, str]]:
    """For the edge client: Parquet metadata carrying the robot's signature of the episode."""

    def sign(episode: Any) -> dict[str, str]:
        key = robot_key(fleet, episode.robot_id)
        return {SIGNATURE_KEY: sign_episode_id(key, episode.episode_id), SIGNER_KEY: episode.robot_id}

    return sign


def episode_signature_check(fleet: Any) -> Callable[[Any, Mapping[str, str]], str | None]:
    """For ingestion: None when the episode carries its robot's valid signature, else the reason."""

    def check(episode: Any, metadata: Mapping[str, str]) -> str | None:
        signature = metadata.get(SIGNATURE_KEY)
        if not signature:
            return "unsigned episode"
        if metadata.get(SIGNER_KEY) != episode.robot_id:
            return f"signed by {metadata.get(SIGNER_KEY)!r}, not by its robot {episode.robot_id!r}"
        expected = sign_episode_id(robot_key(fleet, episode.robot_id), episode.episode_id)
        if not hmac.compare_digest(signature, expected):
            return "bad signature"
        return None

    return check


def release_message(version: str, checkpoint: str, policy_sha256: str) -> str:
    return f"release:{version}|{checkpoint}|{policy_sha256}"


def sign_release(key: bytes, version: str, checkpoint: str, policy_sha256: str) -> str:
    return _mac(key, release_message(version, checkpoint, policy_sha256))


def verify_release(key: bytes, version: str, checkpoint: str, policy_sha256: str, signature: str) -> bool:
    return bool(signature) and hmac.compare_digest(signature, sign_release(key, version, checkpoint, policy_sha256))

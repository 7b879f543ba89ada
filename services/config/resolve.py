"""Resolve the policy for a run.

Foundation scope: an explicit ``--settings`` file (strict JSON) or the built-in
defaults.  JSONC, discovery, ``extends`` and templates build on this in the
configuration issue; the reply already carries the chain of sources so
callers do not change when they arrive.
"""

from __future__ import annotations

import os

import msgspec

from fence.bus import ServiceError
from fence.messages import ConfigResolveReply, ConfigResolveRequest
from fence.policy import Policy

MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(ServiceError):
    """A config that cannot be used; the message names the file and the problem."""

    code = "invalid_config"


def load_file(path: str) -> Policy | None:
    """Load one config file; None when it is missing or blank (= defaults)."""
    try:
        if os.path.isdir(path):
            raise ConfigError(f"failed to read config file: {path} is a directory")
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"failed to read config file: {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"failed to read config file: {path} is larger than {MAX_CONFIG_BYTES} bytes")
    if not data.strip():
        return None
    try:
        return msgspec.json.decode(data, type=Policy)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid configuration in {path}: {e}") from None
    except msgspec.DecodeError as e:
        raise ConfigError(f"invalid JSON in config file {path}: {e}") from None


def resolve(req: ConfigResolveRequest) -> ConfigResolveReply:
    if req.template:
        raise ConfigError(f"unknown template {req.template!r}")
    if req.settings:
        path = os.path.join(req.cwd, os.path.expanduser(req.settings))
        policy = load_file(path)
        if policy is not None:
            return ConfigResolveReply(policy=policy, sources=[f"settings: {path}"])
        return ConfigResolveReply(policy=Policy(), sources=[f"settings: {path} (missing or empty: defaults)"])
    return ConfigResolveReply(policy=Policy(), sources=["built-in defaults"])

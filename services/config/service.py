"""The config service: answers ``fence.config.resolve`` with a resolved policy.

The reply carries the policy, the chain of sources (nearest first) and the
provenance of every field set (``fence.config.resolve``).  The handler only
reads files and never blocks on anything but them: FIFOs and devices are
refused (``fence.config.load``), so a request cannot stall a shared service.
Bad configs raise ``ConfigError`` (code ``invalid_config``), which the bus
turns into an ``ErrorReply``.
"""

from __future__ import annotations

from fence.config.resolve import resolve
from fence.messages import ConfigResolveReply, ConfigResolveRequest
from fence.service import Endpoint, Service
from fence.subjects import CONFIG_RESOLVE


class ConfigService(Service):
    name = "fence-config"
    description = "Resolves the policy of a run: templates, settings files, discovery, extends, validation"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("resolve", CONFIG_RESOLVE, ConfigResolveRequest, self.resolve)]

    async def resolve(self, req: ConfigResolveRequest) -> ConfigResolveReply:
        return resolve(req)

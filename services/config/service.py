"""The config service: answers ``fence.config.resolve`` with a resolved policy.

The reply carries the policy and its provenance records: the chain of
sources (nearest first), which of them set each field, and the user config
directory (``fence.config.resolve``), so the executor never reads a config
file or imports ``fence.config``.  The handler only
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

"""The config service: answers ``fence.config.resolve`` with a resolved policy."""

from __future__ import annotations

from fence.config.resolve import resolve
from fence.messages import ConfigResolveReply, ConfigResolveRequest
from fence.service import Endpoint, Service
from fence.subjects import CONFIG_RESOLVE


class ConfigService(Service):
    name = "fence-config"
    description = "Resolves the policy of a run: settings file, templates, extends, defaults"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("resolve", CONFIG_RESOLVE, ConfigResolveRequest, self.resolve)]

    async def resolve(self, req: ConfigResolveRequest) -> ConfigResolveReply:
        return resolve(req)

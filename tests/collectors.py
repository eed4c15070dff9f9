"""A collector for ``midgram exporter --collector collectors:Commands`` (docs/monitoring.md,
"More collectors"): how many commands the server lists, by the module exporting them."""

from __future__ import annotations

from collections import Counter

from midgram.monitoring.scrape import MI, Kind, Reading


class Commands:
    name = "commands"

    async def collect(self, mi: MI) -> list[Reading]:
        modules: Counter[str] = Counter()
        for command in await mi.call("which"):
            info = await mi.call("help", {"mi_cmd": command})
            modules[info["Exported by"]] += 1
        return [
            Reading("commands", count, Kind.GAUGE, "MI commands by module", (("module", name),))
            for name, count in sorted(modules.items())
        ]


class Broken:
    """Calls a command the server does not have: its readings are lost, nothing else."""

    name = "broken"

    async def collect(self, mi: MI) -> list[Reading]:
        await mi.call("no_such_command")
        return []

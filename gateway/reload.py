"""Settings that change without a restart: the config file, watched and re-read.

Every `config_reload_seconds` (and on SIGHUP) the YAML file named by `--config` is checked; when
its content changed, the settings are loaded again from the same flags, environment and file. A
file that no longer validates is refused with one error line naming the setting, and the running
settings stay. Of a valid one, these apply at once:

* `models.<name>.*` of the models the gateway fronts: thresholds, uncertain label, labels,
  default_version, canary, shadow (gateway/registry.py);
* `backend` (a static fleet that grew or shrank, another DNS name: gateway/fleet.py);
* `callers`, `max_queue_per_caller` and `fair_queueing` (a caller's new settings apply when it
  next has requests waiting after an idle moment).

Any other change is logged as needing a restart, by name, and is not applied: the running
settings take only the keys above from the new file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from gateway.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

LIVE = {"models", "backend", "callers", "max_queue_per_caller", "fair_queueing"}

Apply = Callable[[Settings], Awaitable[None]]


class SettingsReloader:
    def __init__(self, settings: Settings, flags: Mapping[str, Any], apply: Apply):
        """`flags`: the command line as parsed at start-up; `apply(settings)` takes a changed one."""
        self.settings = settings
        self._flags = dict(flags)
        self._apply = apply
        self._wake = asyncio.Event()
        self._seen = self._digest()

    def request(self) -> None:
        """Re-read now (SIGHUP)."""
        self._wake.set()

    async def run(self) -> None:
        """Watch forever (a task; cancel it to stop)."""
        interval = self.settings.config_reload_seconds
        while True:
            if interval > 0:
                try:
                    async with asyncio.timeout(interval):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            else:
                await self._wake.wait()
            forced = self._wake.is_set()
            self._wake.clear()
            try:
                await self.check(forced)
            except Exception:  # the watcher must outlive one bad reload
                log.exception("config reload failed", extra={"fields": {"event": "config_reload", "ok": False}})

    async def check(self, forced: bool = False) -> bool:
        """Load the settings again when the file changed (or `forced`); True when some applied."""
        digest = self._digest()
        if digest == self._seen and not forced:
            return False
        self._seen = digest
        try:
            fresh = await asyncio.to_thread(load_settings, self._flags)
        except SettingsError as exc:
            log.error("config not reloaded: %s", exc, extra={"fields": {"event": "config_reload", "ok": False}})
            return False
        old = self.settings.model_dump()
        new = fresh.model_dump()
        changed = sorted(k for k in new if new[k] != old[k])
        restart = [k for k in changed if k not in LIVE]
        if self.settings.model_names != fresh.model_names:
            restart.append("the set of models (default_model and models.* names)")
        if restart:
            log.warning("config changes that need a restart: %s", ", ".join(restart),
                        extra={"fields": {"event": "config_reload", "restart_needed": restart}})
        live = [k for k in changed if k in LIVE]
        if not live:
            return False
        self.settings = self.settings.model_copy(update={k: getattr(fresh, k) for k in live})
        await self._apply(self.settings)
        log.info("config reloaded", extra={"fields": {"event": "config_reload", "ok": True, "applied": live}})
        return True

    def _digest(self) -> bytes | None:
        path = self.settings.config
        if path is None:
            return None
        try:
            return hashlib.sha256(Path(path).read_bytes()).digest()
        except OSError:
            return None

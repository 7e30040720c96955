"""A changed config file, taken while the gateway runs: the reloader applies only the settings it
says apply live, and the fleet follows a new backend - static list to DNS name and back, and in
channel mode - without its watcher dying under a status round that was asking the old endpoints;
and how many endpoints the batches in flight are counted for.

The fleet runs in-process here against the session's real model server (conftest `model_server`),
so the test can look at its endpoints and tasks directly."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fleet import Fleet
from gateway.metrics import Metrics
from gateway.reload import SettingsReloader
from gateway.settings import Settings, load_settings

RESOLVER = "fleet-resolver"


def resolvers() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name() == RESOLVER and not t.done()]


async def until(condition, what: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)
    assert condition(), what


def test_a_reload_applies_only_what_it_says_applies_live(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text("default_model: fashion\nmax_queue_per_caller: 0\n")
    applied: list[Settings] = []

    async def apply(settings: Settings) -> None:
        applied.append(settings)

    async def main():
        reloader = SettingsReloader(load_settings({"config": str(config)}), {"config": str(config)}, apply)
        # One live change (max_queue_per_caller) next to two that need a restart.
        config.write_text("default_model: shoes\nmodels: {shoes: {}}\nmax_queue_per_caller: 7\n"
                          "request_timeout_seconds: 3\n")
        assert await reloader.check()
        return reloader.settings

    running = asyncio.run(main())
    assert [s.max_queue_per_caller for s in applied] == [7]
    assert applied[0].default_model == "fashion", "a change logged as needing a restart must not apply"
    assert applied[0].request_timeout_seconds == Settings().request_timeout_seconds
    assert running == applied[0]


@pytest.mark.slow
def test_the_fleet_follows_a_new_backend_and_its_watcher_survives(model_server):
    port = model_server.grpc_target.rsplit(":", 1)[1]
    static = f"ipv4:127.0.0.1:{port}"
    by_name = f"dns:///localhost:{port}"
    two = f"ipv4:127.0.0.1:{port},127.0.0.2:{port}"  # the second one answers nothing (nobody listens)

    async def main():
        settings = Settings(backend=static, backend_resolve_seconds=0.2, health_check_interval_seconds=0.2)
        # Three models: a status round asks each in turn, so a round is under way when the backend changes.
        fleet = Fleet(settings, Metrics(), ["fashion", "absent-a", "absent-b"])
        watcher = asyncio.create_task(fleet.run())
        try:
            await until(lambda: fleet.served("fashion"), "the static endpoint serves fashion")
            assert not resolvers(), "a static list is not resolved"

            await fleet.reconfigure(settings.model_copy(update={"backend": by_name}))
            await until(lambda: f"127.0.0.1:{port}" in fleet.served("fashion"), "the DNS name resolved and served")
            assert len(resolvers()) == 1, "a dns target is resolved by one resolver"

            await fleet.reconfigure(settings.model_copy(update={"backend": two}))
            assert not resolvers(), "back to a static list: the resolver stops"
            assert set(fleet.members) == {f"127.0.0.1:{port}", f"127.0.0.2:{port}"}
            await fleet.poll()
            assert set(fleet.members) == {f"127.0.0.1:{port}", f"127.0.0.2:{port}"}

            # Right after a round starts, swap the backend under it, twice.
            for backend in (static, two, static):
                fleet._polling = None
                round_ = asyncio.ensure_future(fleet.poll())
                await asyncio.sleep(0)
                await fleet.reconfigure(settings.model_copy(update={"backend": backend}))
                await asyncio.gather(round_, return_exceptions=True)
            await until(lambda: fleet.served("fashion"), "fashion served after the swaps")
            assert not watcher.done(), "the fleet watcher must outlive a round on endpoints that left"
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await fleet.close()
        assert not resolvers()

    asyncio.run(main())


def test_channel_mode_leaves_a_dns_name_to_grpc(model_server):
    port = model_server.grpc_target.rsplit(":", 1)[1]
    target = f"dns:///localhost:{port}"

    async def main():
        settings = Settings(backend=target, backend_balancing="channel", backend_resolve_seconds=0.2)
        fleet = Fleet(settings, Metrics(), ["fashion"])
        watcher = asyncio.create_task(fleet.run())
        try:
            await until(lambda: fleet.served("fashion"), "the channel serves fashion")
            assert not resolvers(), "in channel mode grpc's own resolver balances the name"
            await fleet.poll()
            assert list(fleet.members) == [target]
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await fleet.close()

    asyncio.run(main())


def test_batches_in_flight_count_the_endpoints_serving_a_model(model_server):
    """max_concurrent_batches is per endpoint: with a second, unreachable address in the list, the
    fleet counts the one endpoint that serves; one round_robin channel counts both addresses, since
    grpc balances them out of the gateway's sight."""
    dead = "127.0.0.1:1"  # nothing listens on port 1

    async def main():
        for balancing, expected in (("endpoints", 1), ("channel", 2)):
            settings = Settings(backend=f"ipv4:{model_server.grpc_target},{dead}", backend_balancing=balancing)
            fleet = Fleet(settings, Metrics(), ["fashion"])
            watcher = asyncio.create_task(fleet.run())
            try:
                await until(lambda: fleet.served("fashion"), f"{balancing}: fashion is served")
                assert fleet.endpoints_serving("fashion") == expected, balancing
                assert fleet.endpoints_serving("no-such-model") == 1, "a batch can always be tried"
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await fleet.close()

    asyncio.run(main())

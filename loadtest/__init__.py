"""Load tests and benchmarks: how the stack scales, measured rather than guessed.

* `python -m loadtest.run` (`make loadtest`): a Locust run over gRPC and REST with an SLO
  verdict; report in `reports/loadtest/<timestamp>/`.
* `python -m loadtest.bench` (`make bench`): the side-by-side benchmark (direct vs gateway,
  batching on vs off, ...); report in `reports/bench/<timestamp>/`.

Locust monkey-patches the standard library with gevent when it is imported, so only
`loadtest/locustfile.py` (run by Locust in its own process) imports it. Every other module here is
importable from a normal process (the orchestrators, the tests) without that side effect.
"""

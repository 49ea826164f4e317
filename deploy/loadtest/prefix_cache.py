"""How much of each step's prefill the target answered from its prefix cache.

Load-test prompts should be as new to the server as real users' are: a prompt whose KV blocks are already
cached skips prefill, which lowers TTFT and raises throughput. step_blocks.py keeps steps from replaying
each other's prompts (GuideLLM 0.8.1 would: vllm-project/guidellm#460), but prompts can still meet earlier
traffic, such as a previous run with the same seed against the same server. This says how much it happened:
vLLM's `vllm:prefix_cache_queries_total` and `vllm:prefix_cache_hits_total` counters (prompt tokens looked
up / found), read once a second from the target's /metrics during the run, give each step's hit rate.
Targets that do not expose them (a gateway, another server) get null.
"""

from __future__ import annotations

import bisect
import threading
import time
import urllib.error
import urllib.request
from types import TracebackType

QUERIES = "vllm:prefix_cache_queries_total"
HITS = "vllm:prefix_cache_hits_total"


def read_counters(text: str) -> tuple[float, float] | None:
    """(queries, hits) summed over every label set of a Prometheus text page, or None if absent."""
    totals = {QUERIES: 0.0, HITS: 0.0}
    seen = False
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
            seen = True
    return (totals[QUERIES], totals[HITS]) if seen else None


class PrefixCacheWatch:
    """Samples the target's prefix-cache counters in a background thread while a run is in progress."""

    def __init__(self, metrics_url: str, headers: dict[str, str], interval: float = 1.0) -> None:
        self.metrics_url = metrics_url
        self.headers = headers
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), queries, hits)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="prefix-cache-watch", daemon=True)

    def _sample(self) -> bool:
        request = urllib.request.Request(self.metrics_url, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                counters = read_counters(response.read().decode("utf-8", "replace"))
        except (urllib.error.URLError, OSError, ValueError):
            return False
        if counters is None:
            return False
        self.samples.append((time.time(), *counters))
        return True

    def _poll(self) -> None:
        if not self._sample():
            return  # no counters at the first look: not a vLLM /metrics; stay quiet
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PrefixCacheWatch:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.samples:
            self._sample()  # a last reading after the run

    def hit_rate(self, start: float, end: float) -> float | None:
        """Hits / queries between the last sample before `start` and the first after `end`, or None.

        Steps are seconds apart (GuideLLM sets up each one), so a 1 s sampling interval separates them;
        where another step shares a sample interval, its tokens leak into this one's rate.
        """
        times = [sample[0] for sample in self.samples]
        before = bisect.bisect_right(times, start) - 1
        after = bisect.bisect_left(times, end)
        if before < 0 or after >= len(self.samples):
            return None
        queries = self.samples[after][1] - self.samples[before][1]
        hits = self.samples[after][2] - self.samples[before][2]
        return round(hits / queries, 4) if queries > 0 else None

"""Central DP's server half: Flower's DP wrappers, with the release made what flip accounts.

- The noise is drawn from a generator seeded per round, and is calibrated to the denominator of
  the mean that is released: the k replies aggregated (replace_one), or the expected count q*N
  (add_remove). Flower's wrappers divide by the number of sites sampled, so a round in which a
  site dropped out would get less noise than its mean needs.
- Adaptive clipping: Flower moves the clipping norm before it adds the noise; the noise here
  follows the norm the updates were clipped to, which is what their sensitivity depends on.
- add_remove (DP-FedAvg, McMahan et al. 2018): every site is sampled independently with
  probability q, seeded from (seed, round); the clipped updates are summed and divided by q*N,
  however many replied, and a round that samples no site still releases the noised model.
  Adaptive clipping's bits are centred (b - 1/2, Andrew et al. 2021), so one site moves their
  sum by 1/2 and the count is divided by q*N too.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from flip.seeding import seeded_numpy


class CalibratedNoise:
    """Put in front of a Flower DP wrapper (see the module docstring)."""

    flip_seed: int
    # q*N under add_remove; None: the number of replies aggregated.
    flip_denominator: float | None = None
    _flip_replies: int = 0
    _flip_clip: float = 0.0

    def aggregate_train(self, server_round: int, replies: Any) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._flip_replies = len(replies)
        self._flip_clip = self.clipping_norm  # what these updates were clipped to
        # Flower checks the replies against this count; flip accounts for sites that did not reply.
        self.num_sampled_clients = len(replies)
        with seeded_numpy(f"{self.flip_seed}-noise-{server_round}"):
            return super().aggregate_train(server_round, replies)

    def _add_noise_to_aggregated_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        saved = self.num_sampled_clients, self.clipping_norm
        self.num_sampled_clients = self.flip_denominator or self._flip_replies
        self.clipping_norm = self._flip_clip
        try:
            return super()._add_noise_to_aggregated_arrays(arrays)
        finally:
            self.num_sampled_clients, self.clipping_norm = saved

    def _noisy_fraction(self, count: int, total: int) -> float:
        """The noisy share of clipped updates (adaptive wrappers only)."""
        if self.flip_denominator is None:
            return super()._noisy_fraction(count, total)
        centred = np.random.normal(count - total / 2, self.clipped_count_stddev)
        return float(centred) / self.flip_denominator + 0.5


def poisson_draws(seed: int, server_round: int, num_sites: int) -> np.ndarray:
    """One uniform draw per site, the same for the same (seed, round): site i trains if draws[i] < q."""
    digest = hashlib.sha256(f"{seed}-poisson-{server_round}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).random(num_sites)


class PoissonSampled(Strategy):
    """The inner strategy with each site sampled with probability `rate`, and its mean turned into
    the sum of the updates over `rate * num_sites`. Flower's sampling must offer every site.

    `observer` (flip's round keeper) hears of a round that sampled no site, which no grid sees.
    """

    def __init__(self, strategy: Strategy, rate: float, num_sites: int, seed: int, observer: Any = None):
        super().__init__()
        self.strategy = strategy
        self.rate, self.num_sites, self.seed = rate, num_sites, seed
        self.observer = observer
        self._current = ArrayRecord()
        self._sampled = 0

    def configure_train(self, server_round, arrays, config, grid) -> list[Message]:
        self._current = arrays
        offered = list(self.strategy.configure_train(server_round, arrays, config, grid))
        site_of = _site_index(grid)
        draws = poisson_draws(self.seed, server_round, self.num_sites)
        sampled = [m for m in offered if draws[site_of[m.metadata.dst_node_id]] < self.rate]
        self._sampled = len(sampled)
        if not sampled and self.observer is not None:
            self.observer.before_train(server_round, [], population=self.num_sites)
        return sampled

    def aggregate_train(self, server_round, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if not replies:
            if self._sampled == 0 and self.observer is not None:
                self.observer.train_replies(server_round, [])
            return self._current, None  # the wrapper noises it: an empty sample still releases
        mean, metrics = self.strategy.aggregate_train(server_round, replies)
        if mean is None:
            return None, metrics
        scale = len(replies) / (self.rate * self.num_sites)
        summed = {}
        for key, value in mean.items():
            current, average = self._current[key].numpy(), value.numpy()
            summed[key] = Array(np.asarray(current + scale * (average - current), dtype=average.dtype))
        return ArrayRecord(summed), metrics

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()


def _site_index(grid: Any) -> dict[int, int]:
    """Node id -> site index: flip's grid knows it; otherwise the order of the node ids."""
    mapping = getattr(grid, "node_to_site", None)
    return dict(mapping) if mapping is not None else {node: i for i, node in enumerate(sorted(grid.get_node_ids()))}

"""Schedules, counted in optimizer steps: GMP's cubic sparsity ramp and RigL's cosine drop fraction."""

from __future__ import annotations

import math
from dataclasses import dataclass

ANCHORS = ("start", "absolute")


def halvings(sparsity: float) -> float:
    """How many times the kept fraction is halved to reach `sparsity`: log2(1 / (1 - s)) (0.5 -> 1, 0.75 -> 2)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    return math.log2(1.0 / (1.0 - sparsity))


def sparsity_scaled_end(sparsity: float, start: float, per_halving: float, latest_end: float) -> float:
    """The end of a pruning window whose length grows with the target sparsity (GMP*, arXiv 2210.06384 and
    2312.13547, "sparsity-scaled schedules"): `per_halving` of training for every halving of the kept weights,
    end = min(start + per_halving * log2(1 / (1 - s)), latest_end).

    Why log2: going from 50% to 75% removes as large a share of what is left as going from 0 to 50%, so each
    halving gets the same number of steps (and, at a fixed `--prune_frequency`, the same number of pruning
    events); a fixed window crams the hardest halvings of a high target into a few events. `latest_end` keeps
    room to recover after the last event.
    """
    if per_halving < 0.0:
        raise ValueError(f"the window per halving must be >= 0; got {per_halving}")
    return max(start, min(start + per_halving * halvings(sparsity), latest_end))


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (tf - t0))^3 for t0 <= t <= tf.

    Pruning events fall every `frequency` steps from `start` (`anchor="start"`) or at the multiples of
    `frequency` in [start, end) (`anchor="absolute"`, the official SMC-Bench code's `t % f == 0`), and
    always at `end`, so the final event reaches exactly the target (the original code's `t < tf`
    condition undershoots it). The initial sparsity s_i is 0 for GMP; GMP* (Kurtic & Alistarh 2022)
    prunes a large one-shot step s_i > 0 at the first event and follows the cubic from there.
    """

    final_sparsity: float
    start: int
    end: int
    frequency: int
    anchor: str = "start"
    initial_sparsity: float = 0.0

    @classmethod
    def from_fractions(
        cls, final_sparsity: float, total_steps: int, start: float, end: float, frequency: int, anchor: str = "start",
        initial_sparsity: float = 0.0,
    ) -> CubicSchedule:
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}; got {anchor!r}")
        t0 = round(start * total_steps)
        tf = max(t0, round(end * total_steps))
        return cls(final_sparsity, t0, tf, frequency, anchor, initial_sparsity)

    def _origin(self) -> int:
        return self.start if self.anchor == "start" else 0

    def sparsity_at(self, step: int) -> float:
        """The schedule's sparsity at (continuous) step `step`."""
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.final_sparsity
        progress = (step - self.start) / (self.end - self.start)
        if self.initial_sparsity == 0.0:  # the same float operations as before GMP* existed: masks unchanged
            return self.final_sparsity * (1.0 - (1.0 - progress) ** 3)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3

    def is_event(self, step: int) -> bool:
        return step == self.end or (self.start <= step < self.end and (step - self._origin()) % self.frequency == 0)

    def sparsity_after(self, step: int) -> float:
        """Sparsity the model has after optimizer step `step`: the schedule at the last event <= step."""
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.final_sparsity
        last = self._origin() + (step - self._origin()) // self.frequency * self.frequency
        return self.sparsity_at(last) if last >= self.start else 0.0

    def events(self) -> list[int]:
        """The optimizer steps after which the masks change (the schedule's sparsity rises), in order."""
        steps, previous = [], 0.0
        for step in range(self.start, self.end + 1):
            if self.is_event(step) and self.sparsity_at(step) > previous:
                steps.append(step)
                previous = self.sparsity_at(step)
        return steps


@dataclass(frozen=True)
class CosineDropSchedule:
    """RigL's drop fraction: f_t = floor + (f0 - floor) / 2 * (1 + cos(pi * t / t_end)); updates every `interval`
    steps. `floor` is 0 in RigL; the official SMC-Bench code decays to 0.005 (`CosineDecay`'s `eta_min`)."""

    initial_fraction: float
    interval: int
    end: int
    floor: float = 0.0

    @classmethod
    def from_fractions(cls, initial_fraction: float, interval: int, total_steps: int, end: float,
                       floor: float = 0.0) -> CosineDropSchedule:
        return cls(initial_fraction, interval, round(end * total_steps), floor)

    def fraction_at(self, step: int) -> float:
        if step >= self.end:
            return 0.0
        return self.floor + (self.initial_fraction - self.floor) / 2.0 * (1.0 + math.cos(math.pi * step / self.end))

    def is_update(self, step: int) -> bool:
        return 0 < step < self.end and step % self.interval == 0

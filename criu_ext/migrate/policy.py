"""When pre-copy stops: a pure function of the pages each round wrote (unit-tested).

P.Haul's rule, made explicit: a bounded number of rounds; stop once a round
wrote fewer pages than a threshold (what is left is cheap to send frozen), or
once the dirty set stops shrinking (the task dirties memory as fast as we send
it: more rounds only cost time and bytes), or grows by more than 10 %.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    max_rounds: int = 8
    min_pages: int = 64  # a round that wrote fewer is good enough
    shrink: float = 0.9  # a round must write below shrink * the previous one to go on
    grow: float = 1.1  # above grow * the previous one: growing

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ValueError("pre-copy needs at least one round")
        if self.min_pages < 0 or not 0 < self.shrink <= 1 or self.grow < 1:
            raise ValueError("pre-copy policy out of range")


@dataclass(frozen=True)
class Decision:
    again: bool
    reason: str  # why we stop (or "shrinking" when we go on)


def next_round(pages: list[int], policy: Policy = Policy()) -> Decision:
    """After the rounds that wrote ``pages[i]`` pages each: take another pre-dump round?"""
    if not pages:
        return Decision(True, "first round")
    last = pages[-1]
    if last < policy.min_pages:
        return Decision(False, f"converged: {last} pages < {policy.min_pages}")
    if len(pages) >= policy.max_rounds:
        return Decision(False, f"{policy.max_rounds} rounds taken")
    if len(pages) >= 2:
        prev = pages[-2]
        if last > prev * policy.grow:
            return Decision(False, f"dirty set grew: {prev} -> {last} pages")
        if last >= prev * policy.shrink:
            return Decision(False, f"dirty set stopped shrinking: {prev} -> {last} pages")
    return Decision(True, "shrinking")

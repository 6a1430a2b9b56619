"""A sequence-parallel plan for one global batch: micro-batches, each a partition of the ranks
0..N-1 into contiguous power-of-two groups, each group running a set of the batch's sequences."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from parallel.cost_model import CostModel, is_power_of_two
from pretrain.errors import HetronError


@dataclass(frozen=True)
class SPGroup:
    start: int
    size: int
    sequences: tuple[int, ...]  # indices into the global batch


@dataclass(frozen=True)
class MicroBatchPlan:
    groups: tuple[SPGroup, ...]

    def time_ms(self, lengths: Sequence[int], cost_model: CostModel) -> float:
        busy = [g for g in self.groups if g.sequences]
        if not busy:
            return 0.0
        return max(cost_model.group_time_ms((lengths[i] for i in g.sequences), g.size) for g in busy)


@dataclass(frozen=True)
class SequenceParallelPlan:
    num_ranks: int
    micro_batches: tuple[MicroBatchPlan, ...]
    predicted_ms: float
    solve_ms: float
    solver_status: str
    dropped: tuple[int, ...] = ()  # indices left out with drop_oversized=True
    bound_ms: float = 0.0  # the planner's lower bound on any plan of this batch (0: none computed)
    method: str = ""  # whose plan this is: greedy, lp-rounding, split-search or milp ("" for other policies)
    late: bool = False  # the solver had not finished when the budget ended (its unfinished part unused)
    milp_ran: int = 0  # micro-batches the MILP was solved for
    milp_improved: int = 0  # of those, how many it made faster

    def time_ms(self, lengths: Sequence[int], cost_model: CostModel) -> float:
        return sum(mb.time_ms(lengths, cost_model) for mb in self.micro_batches)

    def to_dict(self) -> dict:
        return {
            "num_ranks": self.num_ranks,
            "predicted_ms": self.predicted_ms,
            "solve_ms": self.solve_ms,
            "solver_status": self.solver_status,
            "dropped": list(self.dropped),
            "bound_ms": self.bound_ms,
            "method": self.method,
            "late": self.late,
            "milp_ran": self.milp_ran,
            "milp_improved": self.milp_improved,
            "micro_batches": [[{"start": g.start, "size": g.size, "sequences": list(g.sequences)}
                               for g in mb.groups] for mb in self.micro_batches],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict) -> SequenceParallelPlan:
        try:
            micro_batches = tuple(
                MicroBatchPlan(tuple(SPGroup(int(g["start"]), int(g["size"]), tuple(int(i) for i in g["sequences"]))
                                     for g in mb))
                for mb in raw["micro_batches"])
            return cls(num_ranks=int(raw["num_ranks"]), micro_batches=micro_batches,
                       predicted_ms=float(raw.get("predicted_ms", 0.0)), solve_ms=float(raw.get("solve_ms", 0.0)),
                       solver_status=str(raw.get("solver_status", "")),
                       dropped=tuple(int(i) for i in raw.get("dropped", ())),
                       bound_ms=float(raw.get("bound_ms", 0.0)), method=str(raw.get("method", "")),
                       late=bool(raw.get("late", False)), milp_ran=int(raw.get("milp_ran", 0)),
                       milp_improved=int(raw.get("milp_improved", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise HetronError(f"malformed sequence-parallel plan: {exc!r}") from None

    @classmethod
    def from_json(cls, text: str) -> SequenceParallelPlan:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HetronError(f"sequence-parallel plan is not valid JSON: {exc}") from None
        return cls.from_dict(raw)

    def validate(self, lengths: Sequence[int], cost_model: CostModel) -> None:
        """Raise HetronError unless every kept sequence is in exactly one group, each micro-batch's
        groups are contiguous power-of-two ranges tiling 0..N-1, and no group exceeds its capacity."""
        seen: dict[int, int] = {}
        for m, mb in enumerate(self.micro_batches):
            next_start = 0
            for g in sorted(mb.groups, key=lambda g: g.start):
                where = f"micro-batch {m}, group at rank {g.start}"
                if g.start != next_start:
                    raise HetronError(f"plan: {where}: groups must tile ranks contiguously (expected start {next_start})")
                if not is_power_of_two(g.size):
                    raise HetronError(f"plan: {where}: size {g.size} is not a power of two")
                next_start += g.size
                tokens = 0
                for i in g.sequences:
                    if not 0 <= i < len(lengths):
                        raise HetronError(f"plan: {where}: sequence index {i} outside the batch of {len(lengths)}")
                    if i in seen:
                        raise HetronError(f"plan: sequence {i} appears in micro-batches {seen[i]} and {m}")
                    seen[i] = m
                    tokens += lengths[i]
                if tokens > g.size * cost_model.capacity_tokens:
                    raise HetronError(f"plan: {where}: {tokens} tokens exceed the capacity "
                                      f"{g.size} x {cost_model.capacity_tokens}")
            if next_start != self.num_ranks:
                raise HetronError(f"plan: micro-batch {m}: groups cover {next_start} ranks, not {self.num_ranks}")
        dropped = set(self.dropped)
        missing = [i for i in range(len(lengths)) if i not in seen and i not in dropped]
        if missing:
            raise HetronError(f"plan: sequences {missing[:10]} are in no group")
        both = sorted(dropped & seen.keys())
        if both:
            raise HetronError(f"plan: sequences {both[:10]} are both dropped and planned")

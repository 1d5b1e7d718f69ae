"""Building prefix expression trees top-down with the GTS networks: teacher forcing and beam search.

A `Hypothesis` is one partial tree: a stack of goal vectors of the nodes still to expand (GTS's node
stack; the top is the next node in prefix order) and a stack of finished subtree embeddings and
pending operator embeddings (GTS's embedding stack). Emitting an operator pops the node's goal,
pushes its right then left child goals and the operator's embedding; emitting a leaf pops the
goal, then merges the leaf with every finished left sibling below it on the stack (the subtree is
complete) and pushes the result. The tree is complete when no goal is left. Both decoders advance
every live hypothesis of a batch together, so each step is a few batched network calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from smc_trainer.tasks.arithmetic.gts_layers import Generation, Merge, Prediction


@dataclass
class EncodedProblems:
    """What the decoder reads of a batch: encoder states, padding, problem vectors, leaf embeddings and
    which output tokens each problem allows (its number slots beyond its count are not)."""

    states: Tensor  # B x S x H
    padding: Tensor  # B x S, True at padding
    problem: Tensor  # B x H, the root goal
    leaves: Tensor  # B x (C + M) x H: constants, then the problem's numbers
    allowed: Tensor  # B x V bool


@dataclass
class Hypothesis:
    """A partial expression tree (see the module docstring) and its summed log-probability."""

    goals: list[Tensor]
    subtrees: list[tuple[Tensor, bool]] = field(default_factory=list)  # (embedding, is a finished subtree)
    tokens: list[int] = field(default_factory=list)
    score: float = 0.0

    @property
    def finished(self) -> bool:
        return not self.goals

    def left_sibling(self) -> Tensor | None:
        """The finished left sibling subtree of the next node (it is a right child), else None."""
        return self.subtrees[-1][0] if self.subtrees and self.subtrees[-1][1] else None

    def extend(self, token: int, score: float) -> Hypothesis:
        """A copy that takes `token` next, with total score `score` (the stacks are copied; their tensors are
        shared and never modified)."""
        return Hypothesis(list(self.goals), list(self.subtrees), [*self.tokens, token], score)


DISALLOWED = -1e30  # log-probabilities below this belong to masked tokens (number slots a problem lacks)


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    """Stack state vectors in float32 (leaf, merge and goal vectors may differ in dtype under autocast)."""
    return torch.stack([t.float() for t in tensors])


def gold_log_probs(scores: Tensor, labels: Tensor, scored: Tensor) -> Tensor:
    """log p of each gold token (B x T) from per-step scores (B x T x V); 0 where a step was not scored."""
    picked = torch.log_softmax(scores, dim=-1).gather(2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    return torch.where(scored, picked, torch.zeros_like(picked))


class TreeDecoder:
    """Teacher forcing and beam search over the GTS prediction, generation and merge networks."""

    def __init__(self, prediction: Prediction, generation: Generation, merge: Merge, num_operators: int):
        self.prediction = prediction
        self.generation = generation
        self.merge = merge
        self.num_operators = num_operators

    # ---- one step ----------------------------------------------------------------------------

    def _goals(self, hyps: Sequence[Hypothesis]) -> Tensor:
        """q of the next node of each hypothesis; left and right children use different networks."""
        parents = _stack([h.goals[-1] for h in hyps])
        siblings = [h.left_sibling() for h in hyps]
        lefts = [i for i, s in enumerate(siblings) if s is None]
        rights = [i for i, s in enumerate(siblings) if s is not None]
        pieces = []
        if lefts:
            pieces.append(self.prediction.goal(parents[lefts], None))
        if rights:
            pieces.append(self.prediction.goal(parents[rights], _stack([siblings[i] for i in rights])))
        order = torch.tensor(lefts + rights, device=parents.device)
        return torch.cat(pieces)[torch.argsort(order)]

    def scores(self, problems: EncodedProblems, rows: Tensor, hyps: Sequence[Hypothesis]) -> tuple[Tensor, ...]:
        """(token scores R x V with disallowed tokens at the dtype's minimum, goals R x H, contexts R x H)."""
        goals = self._goals(hyps)
        scores, contexts = self.prediction(goals, problems.states[rows], problems.padding[rows],
                                           problems.leaves[rows])
        scores = scores.float().masked_fill(~problems.allowed[rows], torch.finfo(torch.float32).min)
        return scores, goals, contexts

    def advance(self, problems: EncodedProblems, rows: Tensor, hyps: Sequence[Hypothesis], tokens: Sequence[int],
                goals: Tensor, contexts: Tensor) -> None:
        """Apply `tokens[i]` to `hyps[i]` in place (row `rows[i]` of the batch, goal and context of its node)."""
        for h in hyps:
            h.goals.pop()
        ops = [i for i, t in enumerate(tokens) if t < self.num_operators]
        if ops:
            op_ids = torch.tensor([tokens[i] for i in ops], device=goals.device)
            left, right, embedding = self.generation(goals[ops], contexts[ops], op_ids)
            for j, i in enumerate(ops):
                hyps[i].goals.extend([right[j], left[j]])
                hyps[i].subtrees.append((embedding[j], False))
        leaves = [i for i, t in enumerate(tokens) if t >= self.num_operators]
        if leaves:
            leaf_ids = torch.tensor([tokens[i] - self.num_operators for i in leaves], device=goals.device)
            current = dict(zip(leaves, problems.leaves[rows[leaves], leaf_ids]))
            self._merge_finished(hyps, current)

    def _merge_finished(self, hyps: Sequence[Hypothesis], current: dict[int, Tensor]) -> None:
        """Fold each new leaf with the finished left siblings (and their operators) below it, in batched rounds."""
        while True:
            ready = [i for i in current if hyps[i].left_sibling() is not None]
            if not ready:
                break
            left = _stack([hyps[i].subtrees.pop()[0] for i in ready])
            operator = _stack([hyps[i].subtrees.pop()[0] for i in ready])
            merged = self.merge(operator, left, _stack([current[i] for i in ready]))
            current.update(zip(ready, merged))
        for i, embedding in current.items():
            hyps[i].subtrees.append((embedding, True))

    # ---- teacher forcing -------------------------------------------------------------------------

    def token_log_probs(self, problems: EncodedProblems, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(log p of each gold token B x T, mask of the scored tokens B x T) with the gold tree built as it
        is scored; label -100 is padding (a row of -100 is a problem with an out-of-vocabulary equation)."""
        scores, scored = self.teacher_forced_scores(problems, labels)
        return gold_log_probs(scores, labels, scored), scored

    def teacher_forced_scores(self, problems: EncodedProblems, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(the decoder's token scores at every gold step B x T x V, mask of the scored steps B x T).

        Teacher forcing: each step scores the next node of the gold tree built so far, so two models given the
        same labels are scored on the same steps (what distillation compares). Disallowed tokens hold float32's
        minimum; unscored steps hold zeros."""
        batch, length = labels.shape
        hyps = [Hypothesis([problems.problem[b]]) for b in range(batch)]
        vocab = problems.allowed.size(1)
        all_scores = torch.zeros(batch, length, vocab, device=labels.device)
        scored = torch.zeros(batch, length, dtype=torch.bool, device=labels.device)
        for t in range(length):
            active = [b for b in range(batch) if labels[b, t] >= 0 and not hyps[b].finished]
            if not active:
                break
            rows = torch.tensor(active, device=labels.device)
            step_hyps = [hyps[b] for b in active]
            scores, goals, contexts = self.scores(problems, rows, step_hyps)
            all_scores = all_scores.index_put((rows, torch.full_like(rows, t)), scores)
            scored[rows, t] = True
            self.advance(problems, rows, step_hyps, labels[rows, t].tolist(), goals, contexts)
        return all_scores, scored

    # ---- beam search -------------------------------------------------------------------------------

    @torch.no_grad()
    def beam_search(self, problems: EncodedProblems, beam_size: int, max_length: int) -> list[Hypothesis]:
        """The highest-scoring hypothesis per problem after beam search (GTS's: beams ranked by summed
        log-probability, finished trees kept as they are); unfinished if no tree closed in `max_length` tokens."""
        device = problems.states.device
        beams = [[Hypothesis([problems.problem[b]])] for b in range(problems.problem.size(0))]
        for _ in range(max_length):
            live = [(b, h) for b, bs in enumerate(beams) for h in bs if not h.finished]
            if not live:
                break
            rows = torch.tensor([b for b, _ in live], device=device)
            scores, goals, contexts = self.scores(problems, rows, [h for _, h in live])
            top_values, top_ids = torch.log_softmax(scores, dim=-1).topk(min(beam_size, scores.size(1)), dim=-1)
            # options per problem: (score, a finished hypothesis kept as is | None, live row, token)
            options: list[list[tuple[float, Hypothesis | None, int, int]]] = [
                [(h.score, h, -1, -1) for h in bs if h.finished] for bs in beams]
            for r, ((b, h), values, ids) in enumerate(zip(live, top_values.tolist(), top_ids.tolist())):
                options[b].extend((h.score + v, None, r, i) for v, i in zip(values, ids) if v > DISALLOWED)
            beams, fresh, parents = [], [], []
            for problem_options in options:
                kept = []
                for score, done, r, token in sorted(problem_options, key=lambda o: -o[0])[:beam_size]:
                    if done is None:
                        done = live[r][1].extend(token, score)
                        fresh.append(done)
                        parents.append(r)
                    kept.append(done)
                beams.append(kept)
            self.advance(problems, rows[parents], fresh, [h.tokens[-1] for h in fresh], goals[parents],
                         contexts[parents])
        return [max(bs, key=lambda h: h.score) for bs in beams]

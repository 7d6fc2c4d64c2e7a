"""First come, first served (vLLM's default policy; Orca's FCFS, OSDI'22 section 4.1).

Each iteration, in this order, within ``max_num_batched_tokens`` tokens and
``max_num_seqs`` sequences:
1. every running request that is decoding takes one token; when its next token needs a
   block and none is free, the most recently admitted running request is preempted
   (repeatedly) until it fits;
2. running requests part-way through a chunked prefill take their next chunk (as many
   tokens as the budget leaves), preempting later-admitted requests if blocks run out;
3. if nothing was preempted: swapped-out requests come back in order while their blocks
   fit, then waiting requests are admitted in arrival order while their first chunk (the
   whole prompt without chunked prefill) fits the budget and the free blocks. The queue
   is strict: the first request that does not fit stops admission.
A prompt larger than the token budget without chunked prefill (only a prefill target
grown by preemption can be) is admitted alone, when nothing else runs.
"""

from __future__ import annotations

import numpy as np

from simulator.serving.schedulers.base import EMPTY, Scheduler, register_scheduler
from simulator.serving.state import Batch, Requests, Server


@register_scheduler("fcfs")
class FCFS(Scheduler):
    def schedule(self, server: Server, req: Requests, now: float) -> Batch:
        cfg = server.config
        bs = cfg.block_size
        budget = cfg.max_num_batched_tokens
        batch = Batch(decodes=EMPTY)

        # 1. decodes, preempting from the tail when blocks run out.
        dec = server.decode_ids(req)
        if len(dec):
            need = self.blocks_needed(req, dec, req.ctx[dec] + 1, bs) - req.blocks[dec]
            total = int(need.sum())
            while total > server.free_blocks and server.running:
                victim = server.running[-1]
                if req.prefilled[victim] and len(dec) and dec[-1] == victim:
                    total -= int(need[-1])
                    dec, need = dec[:-1], need[:-1]
                self.preempt(server, req, victim, batch)
            req.blocks[dec] += need
            server.free_blocks -= total
            budget -= len(dec)

        # 2. chunks of prefills under way.
        chunks = batch.chunks
        for i in list(server.prefilling):
            if budget <= 0:
                break
            if i not in server.prefilling:  # preempted for an earlier one
                continue
            q = min(int(req.target[i] - req.ctx[i]), budget)
            need = int(self.blocks_needed(req, i, req.ctx[i] + q, bs) - req.blocks[i])
            while need > server.free_blocks and server.running[-1] != i:
                victim = server.running[-1]
                if req.prefilled[victim] and len(dec) and dec[-1] == victim:
                    dec = dec[:-1]  # preempt() frees the block step 1 gave it too
                    budget += 1
                self.preempt(server, req, victim, batch)
            if need > server.free_blocks:
                break
            req.blocks[i] += need
            server.free_blocks -= need
            budget -= q
            chunks.append((i, q))

        # 3. swapped-out, then waiting requests, unless this iteration preempted.
        if not batch.preempted:
            new_dec = []
            while server.swapped and len(server.running) < cfg.max_num_seqs and budget > 0:
                v = server.swapped[0]
                b = int(req.blocks[v])
                extra = int(self.blocks_needed(req, v, req.ctx[v] + 1, bs) - b)
                if b + extra > server.free_blocks:
                    break
                server.swapped.popleft()
                server.swap_free += b
                server.free_blocks -= b + extra
                req.blocks[v] += extra
                batch.swap_in_blocks += b
                server.running.append(v)
                new_dec.append(v)
                budget -= 1
            if new_dec:
                dec = np.concatenate([dec, np.asarray(new_dec, np.int64)])
                server.changed()
            while not server.swapped and server.waiting and len(server.running) < cfg.max_num_seqs and budget > 0:
                i = server.waiting[0]
                hit = self.prefix_hit(server, req, i)
                remaining = int(req.target[i]) - hit
                if cfg.chunked_prefill:
                    q = min(remaining, budget)
                elif remaining <= budget or (not server.running and not chunks):
                    q = remaining
                else:
                    break
                need = -(-q // bs)
                if need > server.free_blocks:
                    break
                server.waiting.popleft()
                req.ctx[i] = hit
                req.shared[i] = hit
                req.blocks[i] = need
                server.free_blocks -= need
                if np.isnan(req.first_scheduled[i]):
                    req.first_scheduled[i] = now
                server.running.append(i)
                server.prefilling.append(i)
                server.changed()
                budget -= q
                chunks.append((i, q))

        batch.decodes = dec
        batch.steady = (not chunks and not batch.preempted and not batch.swap_in_blocks
                        and not server.prefilling)
        return batch


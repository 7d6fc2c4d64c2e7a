"""Serving: request streams, iteration-level scheduling (Orca) over a paged KV cache (vLLM),
the discrete-event simulation of replicas behind a router, metrics and capacity search.

    requests.py    streams: Poisson / gamma / closed-loop arrivals, length distributions, traces
    costs.py       the time of one iteration of a mixed batch (the operation costs of estimate())
    kvcache.py     KV blocks per GPU, swap space
    state.py       requests and servers (the entities)
    schedulers/    registered by name: fcfs
    engines/       registered by name: continuous (Orca/vLLM generic), vllm (vLLM 0.15)
    routers.py     round_robin, least_outstanding
    simulate.py    the event loop
    metrics.py     TTFT, TPOT, E2E, goodput; the tidy per-request table
    capacity.py    the highest rate within SLOs, replicas and GPUs for a target rate, cost
    report.py      plots and files of a run
"""

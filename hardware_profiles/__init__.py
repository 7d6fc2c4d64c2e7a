"""Profilers that measure a machine into a YAML profile (``llmsim profile``), and the shipped
profiles in ``data/``. The ``llmsim profile`` command that drives them is ``llmsim/profile_command.py``. Depends on ``simulator`` (for the schema), never the other way round;
torch is imported inside functions only, so importing this package stays cheap.

    profile.py       orchestration, metadata, atomic write validated by ``simulator.hardware``
    pcie.py          host<->GPU links: H2D, D2H, both at once; pinned/pageable; latency+bandwidth fit
    gpu.py           HBM copy, peak GEMM, GEMM table over m, decode attention, kernel launch
    cpu.py           RAM bandwidth and memcpy by threads, op overhead, GEMM by dtype, CPU attention
    disk.py          O_DIRECT and page-cached sequential I/O, parallel readers, read to GPU
    interconnect.py  NCCL all-reduce and send/recv (>= 2 GPUs), gloo between CPU processes
    ops.py, shapes.py, timing.py, devices.py   shared timing, shapes, statistics and fits
    check.py         the headline figures against independent torch measurements (issue 4's 5%)
    fakecuda.py      a stand-in for torch.cuda on the CPU (tests, scripts/gpu_check.sh --dry-run)
"""

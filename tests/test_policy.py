import pytest

from simulator.errors import PolicyError
from simulator.policy import Placement, Policy, Workload


def test_parse_percent():
    p = Placement.parse_percent("20,80,0", "--weights")
    assert p.as_tuple() == pytest.approx((0.2, 0.8, 0.0))
    assert p.offloaded_frac == pytest.approx(0.8)


@pytest.mark.parametrize("text,match", [("20,80", "three percents"), ("a,b,c", "numbers"),
                                        ("50,60,0", "sum to 100"), ("-10,110,0", "within 0..100")])
def test_parse_percent_errors(text, match):
    with pytest.raises(PolicyError, match=rf"--cache: .*{match}"):
        Placement.parse_percent(text, "--cache")


def test_policy_validation():
    with pytest.raises(PolicyError, match="sum to 1"):
        Policy(weights=Placement(0.5, 0.6, 0.0))
    with pytest.raises(PolicyError, match="--gpu-batch-size must be a positive integer, got 0"):
        Policy(gpu_batch_size=0)
    with pytest.raises(PolicyError, match="--tp must be a positive integer, got 0"):
        Policy(tp=0)
    with pytest.raises(PolicyError, match="--disk-io"):
        Policy(disk_io="fast")
    with pytest.raises(PolicyError, match="--cpu-attention with --compress-cache"):
        Policy(cpu_attention=True, compress_cache=True)


def test_workload_validation_and_sequences():
    with pytest.raises(PolicyError, match="--prompt-len must be a positive integer, got -1"):
        Workload(-1, 8)
    pol = Policy(gpu_batch_size=4, num_gpu_batches=3)
    assert pol.block_size == 12
    assert pol.num_sequences(Workload(8, 8)) == 12
    assert pol.num_sequences(Workload(8, 8, 36)) == 36
    with pytest.raises(PolicyError, match="--num-sequences 10 is not a multiple of the block size 12"):
        pol.num_sequences(Workload(8, 8, 10))


def test_policy_dict_round_trip():
    pol = Policy(gpu_batch_size=8, num_gpu_batches=2, weights=Placement(0.3, 0.5, 0.2), cpu_attention=True)
    assert Policy.from_dict(pol.to_dict()) == pol
    with pytest.raises(PolicyError, match="unknown key 'batch'"):
        Policy.from_dict({"batch": 3})

import pytest

from simulator.units import GB, GiB, format_bytes, format_duration, format_rate, parse_size


def test_gb_and_gib_are_different_units():
    assert GB == 1e9
    assert GiB == 1073741824


@pytest.mark.parametrize("text,expected", [("16GiB", 16 * 2**30), ("1.5 TB", 1.5e12), ("512MiB", 512 * 2**20),
                                           ("2", 2 * 2**30), ("100b", 100)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "12 parsecs", "-3GiB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_formatting():
    assert format_bytes(3 * GiB) == "3.00 GiB"
    assert format_bytes(512) == "512 B"
    assert format_rate(54.8e9) == "54.80 GB/s"
    assert format_duration(0.0005) == "500.0 us"
    assert format_duration(2.5e-3) == "2.500 ms"
    assert format_duration(90) == "1.50 min"

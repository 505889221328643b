"""trt_distri.noise.randn against torch.randn with a seeded CPU generator: equal bit for bit."""
from __future__ import annotations

import time

import numpy as np
import pytest

from trt_distri.errors import ConfigError
from trt_distri.noise import randn

torch = pytest.importorskip("torch")

SEEDS = (0, 1, 2, 42, 2**31 - 1, 2**32 - 1, 2**32 + 5, 2**63 - 1, 2**64 - 1)
SHAPES = ((), (0,), (1,), (2,), (3,), (15,), (16,), (17,), (31,), (32,), (33,), (1, 4, 3, 5), (2, 3, 5, 7),
          (1, 4, 16, 16), (1, 4, 30, 17), (1, 4, 128, 128), (100_003,))


def torch_randn(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).numpy()


def assert_bits_equal(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    differ = int((ours.view(np.uint32) != theirs.view(np.uint32)).sum())
    assert differ == 0, f"{differ} of {ours.size} values differ (largest {np.abs(ours - theirs).max()})"


@pytest.fixture(scope="module", autouse=True)
def needs_avx2_kernel():
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip(f"torch runs its libm normal kernel here ({torch.backends.cpu.get_cpu_capability()}); "
                    "trt_distri.noise follows the x86 AVX2 one")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_torch_bit_for_bit(shape, seed):
    assert_bits_equal(randn(shape, seed), torch_randn(shape, seed))


def test_equals_torch_for_many_seeds_and_odd_sizes():
    rng = np.random.default_rng(7)
    for seed, size in zip(rng.integers(0, 2**63, 40), rng.integers(1, 5000, 40)):
        assert_bits_equal(randn((int(size),), int(seed)), torch_randn((int(size),), int(seed)))


def test_large_latent_is_fast_and_equal():
    shape = (2, 4, 480, 480)
    start = time.process_time()
    ours = randn(shape, 3)
    seconds = time.process_time() - start
    assert_bits_equal(ours, torch_randn(shape, 3))
    assert seconds < 1.0, f"randn{shape} took {seconds:.2f} s of CPU time. Note: expected < 1 s"


@pytest.mark.parametrize("seed", (-1, 2**64))
def test_seed_out_of_range_is_refused(seed):
    with pytest.raises(ConfigError, match="seed out of range"):
        randn((4,), seed)

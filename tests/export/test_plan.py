"""export/plan.py: which rows each rank owns, and the errors for sizes that cannot be split."""
from __future__ import annotations

import pytest

from trt_distri.errors import ConfigError, TrtDistriError, UnsplittableError
from trt_distri.export.plan import PatchPlan, make_plan, num_downsamples
from trt_distri.manifest import Plan, decode_record
from trt_distri.models import UNET_CONFIGS

SDXL, SD15, TINY_SDXL = UNET_CONFIGS["sdxl"], UNET_CONFIGS["sd15"], UNET_CONFIGS["tiny-sdxl"]


def test_downsamples_of_shipped_configs():
    assert num_downsamples(SDXL) == 2
    assert num_downsamples(SD15) == 3
    assert num_downsamples(TINY_SDXL) == 2


def test_sdxl_3840_on_4_devices_rows_per_level():
    plan = make_plan(SDXL, 3840, 3840, 4)
    assert (plan.latent_height, plan.latent_width, plan.num_levels) == (480, 480, 3)
    assert [plan.level_rows(level) for level in range(3)] == [120, 60, 30]
    assert [plan.level_width(level) for level in range(3)] == [480, 240, 120]


@pytest.mark.parametrize("devices", [1, 2, 3, 4])
def test_sd15_needs_a_multiple_of_64_per_device(devices):
    ok = 64 * devices * 3
    plan = make_plan(SD15, ok, 512, devices)
    assert plan.level_rows(3) * devices * 64 == ok
    with pytest.raises(UnsplittableError):
        make_plan(SD15, ok + 32, 512, devices)  # enough for SDXL's 32 x n, not for SD 1.x's 64 x n


def test_sd15_refuses_a_height_sdxl_accepts():
    make_plan(SDXL, 384, 512, 4)
    with pytest.raises(UnsplittableError, match="256"):
        make_plan(SD15, 384, 512, 4)


def test_three_devices_where_the_height_divides():
    plan = make_plan(SDXL, 768, 1024, 3)
    assert [plan.level_rows(level) for level in range(3)] == [32, 16, 8]


def test_unsplittable_height_names_nearest_heights_and_device_counts():
    with pytest.raises(UnsplittableError) as info:
        make_plan(SDXL, 1024, 1024, 3)
    message = str(info.value)
    assert "expected a multiple of 32 x 3 = 96, got 1024" in message
    assert "960 or 1056" in message
    assert "[1, 2, 4, 8, 16]" in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, TrtDistriError)


def test_more_devices_than_rows():
    # 64 px on tiny-sdxl: 8 latent rows, 2 rows at the coarsest level, so at most 2 devices.
    make_plan(TINY_SDXL, 64, 64, 2)
    with pytest.raises(UnsplittableError) as info:
        make_plan(TINY_SDXL, 64, 64, 4)
    message = str(info.value)
    assert "use a height of 128" in message
    assert "valid device counts for height 64: [1, 2]" in message


@pytest.mark.parametrize("width, nearest", [(1000, "992 or 1024"), (16, "32")])
def test_bad_width(width, nearest):
    with pytest.raises(ConfigError) as info:
        make_plan(SDXL, 1024, width, 1)
    assert not isinstance(info.value, UnsplittableError)
    assert f"got {width}" in str(info.value) and nearest in str(info.value)


@pytest.mark.parametrize("devices", [0, -1])
def test_fewer_than_one_device(devices):
    with pytest.raises(ConfigError, match="at least 1"):
        make_plan(SDXL, 1024, 1024, devices)


def test_non_positive_size():
    with pytest.raises(ConfigError, match="positive"):
        make_plan(SDXL, 0, 1024, 1)


def test_json_round_trip():
    plan = make_plan(SDXL, 1024, 768, 4)
    data = plan.to_json()
    assert data["levels"] == [{"rows": 32, "width": 96}, {"rows": 16, "width": 48}, {"rows": 8, "width": 24}]
    assert PatchPlan.from_manifest(decode_record(Plan, data)) == plan
